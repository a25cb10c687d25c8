//! The transactional outbox and its relay against the real broker and database: a rolled-back
//! transaction publishes nothing, two relays publish every row once and in aggregate order, a
//! refused publish holds back only its own aggregate, a relay killed between the confirm and the
//! mark publishes again (absorbed by dedup), retention, the `x-partition-key` the relay stamps (a
//! partitioned handler sees each aggregate in order), and the example's end-to-end flow.

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::time::{Duration, Instant};

use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, ExchangeKind};
use serde_json::json;
use worker_core::transport::outbox::OutboxTable;
use worker_core::{Outbox, OutboxEvent, OutboxSettings};
use worker_rabbitmq::Relay;
use worker_tests::handlers::scripted;
use worker_tests::{eventually, text, Outcomes, TestEnv, PATIENCE};

fn settings() -> OutboxSettings {
    OutboxSettings {
        batch_size: 10,
        poll_interval: Duration::from_millis(200),
        retry_base: Duration::from_millis(50),
        retry_cap: Duration::from_millis(200),
        ..OutboxSettings::default()
    }
}

/// A queue `<prefix>probe` bound to the test exchange with `keys`, to see what the relay sends.
async fn probe(env: &TestEnv, keys: &[&str]) -> String {
    let channel = env.connection.create_channel().await.expect("channel");
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .exchange_declare(
            env.broker.exchange.as_str().into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await
        .expect("declare exchange");
    let queue = format!("{}probe", env.broker.queue_prefix);
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare probe queue");
    for key in keys {
        bind(env, &queue, key).await;
    }
    queue
}

async fn bind(env: &TestEnv, queue: &str, key: &str) {
    env.channel
        .queue_bind(
            queue.into(),
            env.broker.exchange.as_str().into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind probe queue");
}

/// Takes every message now in `queue`: `(message_id, properties, body)` in queue order.
async fn take_all(env: &TestEnv, queue: &str) -> Vec<(String, BasicProperties, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some(message) = env
        .channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic_get")
    {
        let id = message
            .delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default();
        out.push((
            id,
            message.delivery.properties.clone(),
            message.delivery.data,
        ));
    }
    out
}

async fn migrate(env: &TestEnv) {
    worker_core::transport::outbox::migrate(&env.pool, &env.config.db_schema)
        .await
        .expect("outbox migration");
}

async fn enqueue(env: &TestEnv, event: OutboxEvent) -> i64 {
    let mut tx = env.pool.begin().await.expect("begin");
    let enqueued = Outbox::enqueue(&mut tx, event).await.expect("enqueue");
    tx.commit().await.expect("commit");
    enqueued.id
}

async fn unpublished(env: &TestEnv) -> i64 {
    env.count(
        "SELECT count(*) FROM outbox WHERE published_at IS NULL AND $1 = $1",
        "",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolled_back_transaction_publishes_nothing_and_a_committed_one_is_published() {
    let env = TestEnv::new().await;
    let queue = probe(&env, &["Probe"]).await;
    let relay = Relay::builder(env.config.clone(), env.broker.clone())
        .settings(settings())
        .start()
        .await
        .expect("relay starts");

    let mut tx = env.pool.begin().await.expect("begin");
    Outbox::enqueue(
        &mut tx,
        OutboxEvent::new("Probe", "agg_1", json!({"n": 1})).event_id("evt_rolled_back"),
    )
    .await
    .expect("enqueue");
    tx.rollback().await.expect("rollback");
    let committed = OutboxEvent::new("Probe", "agg_1", json!({"n": 2}))
        .event_id("evt_committed")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
    enqueue(&env, committed).await;

    eventually("the committed event is delivered", || async {
        env.depth(&queue).await >= 1
    })
    .await;
    eventually("its row is marked published", || async {
        unpublished(&env).await == 0
    })
    .await;
    relay.shutdown().await;

    let messages = take_all(&env, &queue).await;
    assert_eq!(messages.len(), 1, "only the committed event");
    let (id, properties, body) = &messages[0];
    assert_eq!(id, "evt_committed");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(body).unwrap(),
        json!({"n": 2})
    );
    assert_eq!(properties.delivery_mode(), &Some(2));
    assert_eq!(
        properties.content_type().as_ref().map(|s| s.as_str()),
        Some("application/json")
    );
    assert_eq!(
        properties.kind().as_ref().map(|s| s.as_str()),
        Some("Probe")
    );
    let headers = properties.headers().clone().expect("headers");
    assert_eq!(
        headers.inner().get("traceparent"),
        Some(&text(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ))
    );
    assert_eq!(headers.inner().get("x-aggregate-id"), Some(&text("agg_1")));
    assert_eq!(
        env.count(
            "SELECT count(*) FROM outbox WHERE event_id = $1",
            "evt_rolled_back"
        )
        .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_relays_publish_every_row_exactly_once_in_aggregate_order() {
    let env = TestEnv::new().await;
    let queue = probe(&env, &["Probe"]).await;
    migrate(&env).await;
    let first = Relay::builder(env.config.clone(), env.broker.clone())
        .settings(settings())
        .start()
        .await
        .expect("relay 1 starts");
    let second = Relay::builder(env.config.clone(), env.broker.clone())
        .settings(settings())
        .start()
        .await
        .expect("relay 2 starts");

    // 20 aggregates, 15 events each; each aggregate's events are written one transaction after
    // the other (as an aggregate's writes are), aggregates concurrently.
    let aggregates = 20;
    let per_aggregate = 15;
    futures::future::join_all((0..aggregates).map(|a| {
        let env = &env;
        async move {
            for n in 0..per_aggregate {
                let event = OutboxEvent::new("Probe", format!("agg_{a}"), json!({"n": n}))
                    .event_id(format!("evt_{a}_{n}"));
                enqueue(env, event).await;
            }
        }
    }))
    .await;

    eventually("every row is marked published", || async {
        unpublished(&env).await == 0
    })
    .await;
    first.shutdown().await;
    second.shutdown().await;

    // Each confirm came before its mark, so every published row is in the queue now.
    let messages = take_all(&env, &queue).await;
    let mut seen = HashSet::new();
    for (id, _, _) in &messages {
        assert!(seen.insert(id.clone()), "{id} published twice");
    }
    assert_eq!(messages.len(), aggregates * per_aggregate);
    let mut next: HashMap<String, i64> = HashMap::new();
    for (id, _, body) in &messages {
        let aggregate = id.rsplit_once('_').expect("evt_a_n").0.to_owned();
        let n = serde_json::from_slice::<serde_json::Value>(body).unwrap()["n"]
            .as_i64()
            .unwrap();
        let expected = next.entry(aggregate.clone()).or_insert(0);
        assert_eq!(n, *expected, "{aggregate}: events in enqueue order");
        *expected += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_publish_holds_back_later_events_of_its_aggregate_only() {
    let env = TestEnv::new().await;
    let queue = probe(&env, &["Probe"]).await;
    migrate(&env).await;
    // Nothing is bound for `Unbound` yet: the broker returns it (mandatory).
    enqueue(
        &env,
        OutboxEvent::new("Unbound", "agg_x", json!({"n": 1})).event_id("evt_x1"),
    )
    .await;
    enqueue(
        &env,
        OutboxEvent::new("Probe", "agg_x", json!({"n": 2})).event_id("evt_x2"),
    )
    .await;
    enqueue(
        &env,
        OutboxEvent::new("Probe", "agg_y", json!({"n": 1})).event_id("evt_y1"),
    )
    .await;
    let relay = Relay::builder(env.config.clone(), env.broker.clone())
        .settings(settings())
        .start()
        .await
        .expect("relay starts");

    eventually("the other aggregate is published", || async {
        env.count(
            "SELECT count(*) FROM outbox WHERE event_id = $1 AND published_at IS NOT NULL",
            "evt_y1",
        )
        .await
            == 1
    })
    .await;
    eventually("the unroutable event failed twice", || async {
        env.count(
            "SELECT count(*) FROM outbox WHERE event_id = $1 AND attempts >= 2 AND last_error LIKE '%returned%'",
            "evt_x1",
        )
        .await
            == 1
    })
    .await;
    assert_eq!(
        env.count(
            "SELECT count(*) FROM outbox WHERE event_id = $1 AND published_at IS NULL",
            "evt_x2"
        )
        .await,
        1,
        "a later event of the aggregate does not overtake the failed one"
    );

    bind(&env, &queue, "Unbound").await;
    eventually("both held-back events are published", || async {
        unpublished(&env).await == 0
    })
    .await;
    relay.shutdown().await;
    let ids: Vec<String> = take_all(&env, &queue)
        .await
        .into_iter()
        .map(|m| m.0)
        .collect();
    assert_eq!(ids, ["evt_y1", "evt_x1", "evt_x2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_killed_between_confirm_and_mark_publishes_again_and_dedup_absorbs_it() {
    let env = TestEnv::new().await;
    let outcomes = Outcomes::default();
    let worker = worker_rabbitmq::Worker::builder()
        .handler(scripted)
        .migrations(TestEnv::migrator())
        .observer(outcomes.clone())
        .settings(env.settings())
        .start()
        .await
        .expect("worker starts");
    let queue = probe(&env, &["Scripted"]).await;
    enqueue(
        &env,
        OutboxEvent::new("Scripted", "agg_1", json!({})).event_id("evt_outbox_crash"),
    )
    .await;

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_outbox_relay"))
        .envs(env.worker_env())
        .env("OUTBOX_CRASH_AFTER_PUBLISH", "1")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn outbox_relay");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait child") {
            break status;
        }
        assert!(start.elapsed() < PATIENCE, "the relay did not abort");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!status.success(), "the relay aborted: {status:?}");
    assert_eq!(env.depth(&queue).await, 1, "published (and confirmed) once");
    assert_eq!(
        unpublished(&env).await,
        1,
        "the mark rolled back with the crash"
    );

    let relay = Relay::builder(env.config.clone(), env.broker.clone())
        .settings(settings())
        .start()
        .await
        .expect("relay starts");
    eventually("the row is published again and marked", || async {
        unpublished(&env).await == 0
    })
    .await;
    eventually("the handler saw both copies", || async {
        outcomes.of("evt_outbox_crash").len() == 2
    })
    .await;
    relay.shutdown().await;
    worker.shutdown().await.expect("clean shutdown");

    let copies = take_all(&env, &queue).await;
    assert_eq!(copies.len(), 2, "a duplicate publish, never a loss");
    assert!(copies.iter().all(|c| c.0 == "evt_outbox_crash"));
    assert_eq!(
        outcomes.of("evt_outbox_crash"),
        vec![("ok", true), ("duplicate", true)]
    );
    assert_eq!(env.effects("evt_outbox_crash").await, 1, "effect once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_prunes_only_published_rows_past_it() {
    let env = TestEnv::new().await;
    migrate(&env).await;
    for n in 0..3 {
        enqueue(&env, OutboxEvent::new("Probe", "agg", json!({"n": n}))).await;
    }
    sqlx::query(
        "UPDATE outbox SET published_at = now() - interval '2 days' WHERE id = (SELECT min(id) FROM outbox)",
    )
    .execute(&env.pool)
    .await
    .expect("age one row");
    sqlx::query("UPDATE outbox SET published_at = now() WHERE id = (SELECT max(id) FROM outbox)")
        .execute(&env.pool)
        .await
        .expect("publish one row now");
    let table = OutboxTable::new(env.config.db_schema.clone());
    let pruned = table
        .prune(&env.pool, Duration::from_secs(86_400))
        .await
        .expect("prune");
    assert_eq!(pruned, 1, "only the row published two days ago");
    assert_eq!(
        env.count("SELECT count(*) FROM outbox WHERE $1 = $1", "")
            .await,
        2
    );
    assert_eq!(
        unpublished(&env).await,
        1,
        "unpublished rows are never pruned"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn charge_emits_order_paid_through_the_outbox_and_ship_order_consumes_it() {
    worker_tests::ensure_consistent_hash_plugin();
    let env = TestEnv::new().await;
    let worker = order_worker::worker()
        .settings(env.settings())
        .start()
        .await
        .expect("worker starts");
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let order =
        |id: &str, amount: i64| json!({ "orderId": id, "userId": "usr_12", "amount": amount });
    let traced = BasicProperties::default()
        .with_message_id(ShortString::from("evt_e2e_1"))
        .with_content_type(ShortString::from("application/json"))
        .with_headers(FieldTable::from(std::collections::BTreeMap::from([(
            ShortString::from("traceparent"),
            text(&format!("00-{trace_id}-b7ad6b7169203331-01")),
        )])));
    env.publish(
        "OrderPlaced",
        &serde_json::to_vec(&order("ord_e2e", 4900)).unwrap(),
        traced,
    )
    .await;
    let shipped = "SELECT count(*) FROM shipments WHERE order_id = $1 AND version = 1";
    eventually("ord_e2e is shipped at version 1", || async {
        env.count(shipped, "ord_e2e").await == 1
    })
    .await;
    // A duplicate (dedup: no second OrderPaid), a poison order (rolled back: no OrderPaid at
    // all) and a second payment of the same order (version 2).
    env.publish_json("OrderPlaced", "evt_e2e_1", order("ord_e2e", 4900))
        .await;
    env.publish_json("OrderPlaced", "evt_e2e_bad", order("ord_e2e_bad", -5))
        .await;
    env.publish_json("OrderPlaced", "evt_e2e_2", order("ord_e2e", 100))
        .await;
    eventually("ord_e2e is shipped at version 2", || async {
        env.count(
            "SELECT count(*) FROM shipments WHERE order_id = $1 AND version = 2",
            "ord_e2e",
        )
        .await
            == 1
    })
    .await;
    env.wait_dead_letters("charge-on-order-placed", 1).await;
    eventually("the outbox is drained", || async {
        unpublished(&env).await == 0
    })
    .await;
    worker.shutdown().await.expect("clean shutdown");

    assert_eq!(
        env.count(
            "SELECT count(*) FROM outbox WHERE aggregate_id = $1",
            "ord_e2e"
        )
        .await,
        2,
        "one OrderPaid per committed charge"
    );
    assert_eq!(
        env.count(
            "SELECT count(*) FROM outbox WHERE aggregate_id = $1",
            "ord_e2e_bad"
        )
        .await,
        0,
        "a rolled-back charge emits nothing"
    );
    let traceparent: String = sqlx::query_scalar(
        "SELECT headers->>'traceparent' FROM outbox WHERE aggregate_id = 'ord_e2e' ORDER BY id LIMIT 1",
    )
    .fetch_one(&env.pool)
    .await
    .expect("traceparent stored");
    assert!(
        traceparent.starts_with(&format!("00-{trace_id}-")),
        "OrderPaid continues the OrderPlaced trace: {traceparent}"
    );
    assert_eq!(
        env.count(
            "SELECT count(*) FROM processed_events WHERE handler = $1",
            "ship-order"
        )
        .await,
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_amqp_cannot_carry_is_refused_at_enqueue() {
    let env = TestEnv::new().await;
    migrate(&env).await;
    let mut tx = env.pool.begin().await.expect("begin");
    for event in [
        OutboxEvent::new("Probe", "agg", json!({})).event_id(""),
        OutboxEvent::new("Probe", "agg", json!({})).event_id("e".repeat(256)),
        OutboxEvent::new("", "agg", json!({})),
    ] {
        let error = Outbox::enqueue(&mut tx, event).await.expect_err("refused");
        assert!(
            matches!(error, worker_core::EnqueueError::Invalid { .. }),
            "{error}"
        );
    }
    tx.commit().await.expect("commit");
    assert_eq!(unpublished(&env).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_wakes_the_relay_without_waiting_for_a_poll() {
    let env = TestEnv::new().await;
    let queue = probe(&env, &["Probe"]).await;
    let relay = Relay::builder(env.config.clone(), env.broker.clone())
        .settings(OutboxSettings {
            // Never polls again within the test: only the trigger's NOTIFY can wake it.
            poll_interval: Duration::from_secs(3600),
            ..settings()
        })
        .start()
        .await
        .expect("relay starts");
    for n in 0..3 {
        enqueue(
            &env,
            OutboxEvent::new("Probe", "agg", json!({"n": n})).event_id(format!("evt_n{n}")),
        )
        .await;
        eventually("the event is published on the notification", || async {
            unpublished(&env).await == 0
        })
        .await;
    }
    relay.shutdown().await;
    let ids: Vec<String> = take_all(&env, &queue)
        .await
        .into_iter()
        .map(|m| m.0)
        .collect();
    assert_eq!(ids, ["evt_n0", "evt_n1", "evt_n2"]);
}

/// The relay stamps `x-partition-key` = aggregate id, so a partitioned consumer receives each
/// aggregate's events in enqueue order, retries (held in place) included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_events_carry_the_partition_key_and_a_partitioned_handler_sees_each_aggregate_in_order(
) {
    worker_tests::ensure_consistent_hash_plugin();
    let env = TestEnv::new().await;
    migrate(&env).await;
    // Everything is enqueued before the relay starts, so it publishes whole batches with one
    // chain per aggregate running in parallel: the order must come from the key, not from luck.
    const AGGREGATES: usize = 6;
    const SEQS: i32 = 8;
    for seq in 0..SEQS {
        for a in 0..AGGREGATES {
            let key = format!("agg_{a}");
            let fail_times = u32::from(a % 3 == 0 && seq == 2);
            let payload = json!({"key": key, "seq": seq, "failTimes": fail_times});
            enqueue(
                &env,
                OutboxEvent::new("Sequenced", &key, payload).event_id(format!("evt_{a}_{seq}")),
            )
            .await;
        }
    }
    // One row names its partition key explicitly: the relay keeps it (it equals the payload's
    // key here, else the handler would dead-letter it as a mismatch).
    enqueue(
        &env,
        OutboxEvent::new(
            "Sequenced",
            "other-aggregate-id",
            json!({"key": "agg_x", "seq": 0}),
        )
        .event_id("evt_explicit")
        .header("x-partition-key", "agg_x"),
    )
    .await;
    let probe_queue = probe(&env, &["Sequenced"]).await;
    let worker = worker_rabbitmq::Worker::builder()
        .handler(worker_tests::partitioned::sequenced)
        .migrations(TestEnv::migrator())
        .settings(env.settings())
        .outbox_settings(settings())
        .start()
        .await
        .expect("worker starts");
    let total = AGGREGATES * SEQS as usize + 1;
    eventually(&format!("{total} events applied"), || async {
        env.count("SELECT count(*) FROM partition_applied WHERE key <> $1", "")
            .await as usize
            >= total
    })
    .await;
    worker.shutdown().await.expect("clean shutdown");

    let applied: Vec<(String, i32)> =
        sqlx::query_as("SELECT key, seq FROM partition_applied ORDER BY id")
            .fetch_all(&env.pool)
            .await
            .expect("applied");
    for a in 0..AGGREGATES {
        let key = format!("agg_{a}");
        let seqs: Vec<i32> = applied
            .iter()
            .filter(|(k, _)| *k == key)
            .map(|(_, s)| *s)
            .collect();
        assert_eq!(
            seqs,
            (0..SEQS).collect::<Vec<_>>(),
            "{key} applied in order"
        );
    }
    let calls: Vec<(String, i32)> =
        sqlx::query_as("SELECT key, seq FROM partition_calls ORDER BY id")
            .fetch_all(&env.pool)
            .await
            .expect("calls");
    let mut last: HashMap<String, i32> = HashMap::new();
    for (key, seq) in &calls {
        let previous = last.insert(key.clone(), *seq).unwrap_or(-1);
        assert!(*seq >= previous, "{key}: seq {seq} called after {previous}");
    }
    assert!(
        env.take_dead_letters("sequenced").await.is_empty(),
        "no event lacked or mismatched its partition key"
    );
    let published = take_all(&env, &probe_queue).await;
    assert_eq!(published.len(), total);
    for (id, properties, body) in &published {
        let body: serde_json::Value = serde_json::from_slice(body).expect("json body");
        let header = properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-partition-key").cloned());
        let header = match header {
            Some(lapin::types::AMQPValue::LongString(s)) => s.to_string(),
            other => panic!("{id}: x-partition-key is {other:?}"),
        };
        assert_eq!(header, body["key"].as_str().unwrap_or_default(), "{id}");
    }
}
