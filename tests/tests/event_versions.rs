//! Versioned events on the broker, across a deployment: a worker that knows version 2 of
//! `OrderPlaced` reads version 1 through an upcaster and dead-letters a version-3 event as
//! "newer"; once the consumer that knows version 3 is deployed, replaying the dead letters
//! processes both the newer event and an old version-1 one, upcast twice.

use std::sync::Mutex;

use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::BasicProperties;
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::PgConnection;
use worker_core::{handler, Context, ErrorKind, HandlerError};
use worker_rabbitmq::{Worker, WorkerBuilder};
use worker_tests::handlers::insert_effect;
use worker_tests::{eventually, TestEnv};

/// `(event id, order id, amount in cents, currency)` of every event a handler took.
static TAKEN: Mutex<Vec<(String, String, i64, String)>> = Mutex::new(Vec::new());

/// Version 2: `amountCents` (v1 had `amount` in whole euros).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OrderPlacedV2 {
    order_id: String,
    amount_cents: i64,
}

/// Version 3: `currency` is new and required.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OrderPlacedV3 {
    order_id: String,
    amount_cents: i64,
    currency: String,
}

/// The consumer as first deployed: version 2, and a limit it no longer has later.
#[handler(event = "OrderPlaced", name = "charge", dedup, version = 2)]
async fn charge_v2(
    event: OrderPlacedV2,
    tx: &mut PgConnection,
    ctx: &Context,
) -> Result<(), HandlerError> {
    if event.amount_cents > 1000 {
        return Err(HandlerError::poison("AmountOverLimit: above 10.00"));
    }
    let taken = (
        ctx.event_id().into(),
        event.order_id,
        event.amount_cents,
        String::new(),
    );
    TAKEN.lock().expect("lock").push(taken);
    insert_effect(tx, ctx).await
}

/// The consumer deployed later: version 3, no limit.
#[handler(event = "OrderPlaced", name = "charge", dedup, version = 3)]
async fn charge_v3(
    event: OrderPlacedV3,
    tx: &mut PgConnection,
    ctx: &Context,
) -> Result<(), HandlerError> {
    let taken = (
        ctx.event_id().into(),
        event.order_id,
        event.amount_cents,
        event.currency,
    );
    TAKEN.lock().expect("lock").push(taken);
    insert_effect(tx, ctx).await
}

fn v1_to_v2(mut v: Value) -> Result<Value, &'static str> {
    let map = v
        .as_object_mut()
        .ok_or("a v1 OrderPlaced is a JSON object")?;
    let euros = map
        .remove("amount")
        .and_then(|a| a.as_i64())
        .ok_or("a v1 OrderPlaced has an integer `amount`")?;
    map.insert("amountCents".into(), json!(euros * 100));
    Ok(v)
}

fn v2_to_v3(mut v: Value) -> Result<Value, &'static str> {
    v["currency"] = json!("EUR");
    Ok(v)
}

fn first_deployment(env: &TestEnv) -> WorkerBuilder {
    Worker::builder()
        .handler(charge_v2)
        .upcast("OrderPlaced", 1, v1_to_v2)
        .migrations(TestEnv::migrator())
        .settings(env.settings())
}

fn second_deployment(env: &TestEnv) -> WorkerBuilder {
    Worker::builder()
        .handler(charge_v3)
        .upcast("OrderPlaced", 1, v1_to_v2)
        .upcast("OrderPlaced", 2, v2_to_v3)
        .migrations(TestEnv::migrator())
        .settings(env.settings())
}

async fn publish(env: &TestEnv, event_id: &str, version: Option<i32>, payload: Value) {
    let mut headers = FieldTable::default();
    if let Some(version) = version {
        headers.insert(
            ShortString::from("x-event-version"),
            AMQPValue::LongInt(version),
        );
    }
    let properties = BasicProperties::default()
        .with_message_id(ShortString::from(event_id))
        .with_headers(headers);
    let body = serde_json::to_vec(&payload).expect("json");
    env.publish("OrderPlaced", &body, properties).await;
}

fn taken(event_id: &str) -> Vec<(String, String, i64, String)> {
    let taken = TAKEN.lock().expect("lock");
    taken.iter().filter(|t| t.0 == event_id).cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_version_waits_in_the_dlq_for_the_consumer_that_knows_it() {
    let env = TestEnv::new().await;
    let dlq = format!("{}.dlq", env.queue("charge"));
    let worker = first_deployment(&env).start().await.expect("worker starts");
    // No header: version 1, upcast once.
    publish(&env, "evt_v1", None, json!({"orderId": "o1", "amount": 5})).await;
    publish(
        &env,
        "evt_v2",
        Some(2),
        json!({"orderId": "o2", "amountCents": 700}),
    )
    .await;
    // Version 1 but over the first deployment's limit: poison for a reason of its own.
    publish(
        &env,
        "evt_v1_old",
        Some(1),
        json!({"orderId": "o3", "amount": 50}),
    )
    .await;
    // Version 3: this deployment cannot read it.
    publish(
        &env,
        "evt_v3",
        Some(3),
        json!({"orderId": "o4", "amountCents": 900, "currency": "USD"}),
    )
    .await;
    eventually("two dead letters", || async { env.depth(&dlq).await == 2 }).await;
    eventually("the readable events processed", || async {
        env.effects("evt_v1").await == 1 && env.effects("evt_v2").await == 1
    })
    .await;
    worker.shutdown().await.expect("shutdown");
    assert_eq!(
        taken("evt_v1"),
        [("evt_v1".into(), "o1".into(), 500, String::new())]
    );
    assert_eq!(
        taken("evt_v2"),
        [("evt_v2".into(), "o2".into(), 700, String::new())]
    );

    let listed = first_deployment(&env)
        .run_with_args(["worker", "dlq", "list", "--json"])
        .await;
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    let records: Vec<worker_core::DeadLetterRecord> = listed
        .stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("a record per line"))
        .collect();
    let newer = records
        .iter()
        .find(|r| r.original_message.properties.message_id.as_deref() == Some("evt_v3"))
        .expect("evt_v3 dead-lettered");
    assert_eq!(newer.failure_metadata.error_kind, ErrorKind::Poison);
    assert_eq!(
        newer.failure_metadata.last_error,
        "OrderPlaced version 3 is newer than version 2, the newest this handler knows: deploy \
         a consumer that knows version 3, then replay this dead letter"
    );

    // Deploy the consumer that knows version 3, and replay.
    let worker = second_deployment(&env)
        .start()
        .await
        .expect("worker starts");
    let replay = second_deployment(&env)
        .run_with_args(["worker", "dlq", "replay", "evt_v3", "evt_v1_old"])
        .await;
    assert_eq!(replay.code, 0, "{}\n{}", replay.stdout, replay.stderr);
    eventually("both replayed events processed", || async {
        env.effects("evt_v3").await == 1 && env.effects("evt_v1_old").await == 1
    })
    .await;
    worker.shutdown().await.expect("shutdown");

    assert_eq!(
        taken("evt_v3"),
        [("evt_v3".into(), "o4".into(), 900, "USD".into())],
        "version 3 as it was sent"
    );
    assert_eq!(
        taken("evt_v1_old"),
        [("evt_v1_old".into(), "o3".into(), 5000, "EUR".into())],
        "the old version-1 dead letter, upcast 1 → 2 → 3"
    );
    assert_eq!(env.depth(&dlq).await, 0, "nothing left in the DLQ");
}
