//! The test harness: the worker's pipeline over in-memory queues and a virtual clock.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::{PgConnection, PgPool};
use worker_core::testing::{HarnessError, Outcome, TestHarness, TestMessage, GIVE_BACK_PAUSE};
use worker_core::transport::pipeline::Jitter;
use worker_core::{
    handler, Context, ErrorKind, HandlerError, Outbox, OutboxEvent, State, WorkerConfig,
};

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct OrderPlaced {
    order_id: String,
    amount: i64,
    /// Fail retryably while the attempt is at most this.
    #[serde(default)]
    fail_until: u32,
}

fn order(order_id: &str, amount: i64, fail_until: u32) -> serde_json::Value {
    json!({"orderId": order_id, "amount": amount, "failUntil": fail_until})
}

/// A success, a delivery that fails twice, one that always fails, and poison.
fn publish_the_scenario(harness: &mut TestHarness) {
    for (id, payload) in [
        ("ok", order("o1", 10, 0)),
        ("flaky", order("o2", 10, 2)),
        ("hopeless", order("o3", 10, 99)),
        ("poison", order("o4", 0, 0)),
    ] {
        let routed = harness.publish(TestMessage::json("OrderPlaced", id, &payload));
        assert_eq!(routed, 1, "one handler takes OrderPlaced");
    }
}

fn start() -> DateTime<Utc> {
    DateTime::from_timestamp(1_767_225_600, 0).expect("2026-01-01")
}

/// Poison for a non-positive amount, retryable while `attempt <= failUntil`.
#[handler(event = "OrderPlaced", retry = 4)]
async fn notify(event: OrderPlaced, ctx: &Context) -> Result<(), HandlerError> {
    if event.amount <= 0 {
        return Err(HandlerError::poison(format!(
            "InvalidAmount: order {} has amount {}",
            event.order_id, event.amount
        )));
    }
    if ctx.attempt() <= event.fail_until {
        return Err(HandlerError::retryable(format!(
            "Timeout: attempt {} of {}",
            ctx.attempt(),
            event.order_id
        )));
    }
    Ok(())
}

#[tokio::test]
async fn outcomes_retry_schedule_and_records_in_virtual_time() {
    let mut harness = TestHarness::builder()
        .handler(notify)
        .start_at(start())
        .seed(42)
        .config(WorkerConfig {
            consumer: "harness-tests".into(),
            ..WorkerConfig::default()
        })
        .build()
        .await
        .expect("harness");
    publish_the_scenario(&mut harness);
    assert_eq!(
        harness.publish(TestMessage::json("Unrelated", "x", &json!({}))),
        0
    );
    let wall = std::time::Instant::now();
    harness.run_until_idle().await;
    assert!(
        wall.elapsed() < Duration::from_secs(10),
        "virtual time takes no wall time"
    );

    assert_eq!(harness.outcomes("notify", "ok"), [&Outcome::Processed]);
    let poison = harness.outcomes("notify", "poison");
    let record = poison[0].dead_letter().expect("a dead letter");
    assert_eq!(poison.len(), 1);
    assert_eq!(record.failure_metadata.error_kind, ErrorKind::Poison);
    assert_eq!(record.failure_metadata.attempts, 1);
    assert_eq!(
        record.failure_metadata.last_error,
        "InvalidAmount: order o4 has amount 0"
    );
    assert_eq!(record.failure_metadata.consumer, "harness-tests");
    assert_eq!(record.failure_metadata.last_failed_at, start());
    assert_eq!(record.original_message.exchange, "events");

    // The schedule: the policy's delays with the seeded jitter, drawn in delivery order.
    let policy = harness.spec("notify").expect("spec").retry;
    let jitter = Jitter::seeded(42);
    let hopeless: Vec<_> = harness
        .deliveries()
        .iter()
        .filter(|d| d.event_id.as_deref() == Some("hopeless"))
        .collect();
    let flaky: Vec<_> = harness
        .deliveries()
        .iter()
        .filter(|d| d.event_id.as_deref() == Some("flaky"))
        .collect();
    assert_eq!(hopeless.len(), 4, "{hopeless:#?}");
    assert_eq!(flaky.len(), 3, "{flaky:#?}");
    // Delivery order: ok, flaky#1, hopeless#1, poison, then the retries by due time. Replay the
    // draws in that order to know every delay.
    let mut expected_at = std::collections::HashMap::new();
    for delivery in harness.deliveries() {
        if let Outcome::RetryScheduled {
            attempt, at, delay, ..
        } = &delivery.outcome
        {
            let failures = attempt - 1;
            assert_eq!(*delay, policy.delay_with(failures, &jitter), "{delivery:?}");
            assert!(*delay >= policy.base_delay(failures), "{delivery:?}");
            assert_eq!(
                *at,
                delivery.at + chrono::Duration::from_std(*delay).unwrap()
            );
            expected_at.insert(
                (delivery.event_id.clone().unwrap(), *attempt),
                (*at, delivery.at),
            );
        }
    }
    for delivery in hopeless.iter().chain(&flaky) {
        if delivery.attempt > 1 {
            let (due, _) = expected_at[&(delivery.event_id.clone().unwrap(), delivery.attempt)];
            assert_eq!(delivery.at, due, "redelivered when due: {delivery:?}");
        } else {
            assert_eq!(delivery.at, start());
        }
    }
    assert_eq!(
        flaky.iter().map(|d| d.attempt).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(flaky[2].outcome, Outcome::Processed);
    let last = hopeless[3].outcome.dead_letter().expect("exhausted");
    assert_eq!(last.failure_metadata.attempts, 4);
    assert_eq!(last.failure_metadata.error_kind, ErrorKind::Retryable);
    assert_eq!(last.failure_metadata.last_error, "Timeout: attempt 4 of o3");
    assert_eq!(last.failure_metadata.first_failed_at, start());
    assert_eq!(last.failure_metadata.last_failed_at, hopeless[3].at);
    assert!(
        last.original_message
            .headers
            .as_object()
            .is_none_or(|h| h.is_empty()),
        "{last:?}"
    );
    // One trace across every attempt, as in a worker.
    let poison_trace = &record.failure_metadata.trace_id;
    assert_ne!(&last.failure_metadata.trace_id, poison_trace);
    assert_eq!(harness.dead_letters("notify").len(), 2);
    assert_eq!(harness.waiting(), 0);

    // The same seed and start give the same run.
    let mut again = TestHarness::builder()
        .handler(notify)
        .start_at(start())
        .seed(42)
        .build()
        .await
        .expect("harness");
    publish_the_scenario(&mut again);
    again.run_until_idle().await;
    let times = |h: &TestHarness| {
        h.deliveries()
            .iter()
            .map(|d| (d.event_id.clone(), d.attempt, d.at))
            .collect::<Vec<_>>()
    };
    assert_eq!(times(&again), times(&harness));
}

#[tokio::test]
async fn advance_delivers_only_what_falls_due() {
    let mut harness = TestHarness::builder()
        .handler(notify)
        .start_at(start())
        .build()
        .await
        .expect("harness");
    harness.publish(TestMessage::json(
        "OrderPlaced",
        "flaky",
        &order("o2", 10, 1),
    ));
    let first = harness.advance(Duration::ZERO).await;
    assert_eq!(first.len(), 1);
    let Outcome::RetryScheduled { at, attempt, .. } = first[0].outcome.clone() else {
        panic!("{first:?}");
    };
    assert_eq!(attempt, 2);
    // The default policy: 200 ms base, up to 1 s of jitter.
    let wait = (at - start()).to_std().unwrap();
    assert!(wait >= Duration::from_millis(200), "{at}");
    let just_before = wait - Duration::from_nanos(1);
    assert!(harness.advance(just_before).await.is_empty());
    assert_eq!(harness.now(), at - chrono::Duration::nanoseconds(1));
    assert_eq!(harness.next_due(), Some(at));
    let second = harness.advance(Duration::from_millis(500)).await;
    assert_eq!(second.len(), 1);
    assert_eq!((second[0].attempt, second[0].at), (2, at));
    assert_eq!(second[0].outcome, Outcome::Processed);
    assert_eq!(
        harness.now(),
        at - chrono::Duration::nanoseconds(1) + chrono::Duration::milliseconds(500)
    );
    // Far into the future: the clock stops at the last instant it can count, nothing panics.
    assert!(harness.advance(Duration::MAX).await.is_empty());
    assert_eq!(chrono::Datelike::year(&harness.now()), 2262);
}

#[tokio::test]
async fn bad_input_gets_the_records_a_worker_writes() {
    let mut harness = TestHarness::builder()
        .handler(notify)
        .config(WorkerConfig {
            max_payload_bytes: 1000,
            ..WorkerConfig::default()
        })
        .build()
        .await
        .expect("harness");
    harness.publish(TestMessage::raw("OrderPlaced", b"hello".to_vec()).id("not-json"));
    harness.publish(TestMessage::raw(
        "OrderPlaced",
        serde_json::to_vec(&order("o1", 1, 0)).unwrap(),
    ));
    harness.publish(TestMessage::json(
        "OrderPlaced",
        "wrong-shape",
        &json!({"orderId": "o1", "amount": "lots"}),
    ));
    harness.publish(TestMessage::json(
        "OrderPlaced",
        "too-big",
        &json!({"orderId": "x".repeat(2000), "amount": 1}),
    ));
    harness.run_until_idle().await;
    let errors: Vec<(Option<String>, String, ErrorKind)> = harness
        .dead_letters("notify")
        .into_iter()
        .map(|r| {
            (
                r.original_message.id.clone(),
                r.failure_metadata.last_error.clone(),
                r.failure_metadata.error_kind,
            )
        })
        .collect();
    assert_eq!(errors.len(), 4, "{errors:#?}");
    assert!(errors.iter().all(|(_, _, kind)| *kind == ErrorKind::Poison));
    assert!(
        errors[0]
            .1
            .starts_with("payload of OrderPlaced is not valid JSON"),
        "{errors:?}"
    );
    assert_eq!(
        errors[1],
        (
            None,
            "message has no message_id property: the event id is required (set message_id when publishing)".into(),
            ErrorKind::Poison
        )
    );
    assert!(
        errors[2]
            .1
            .starts_with("payload of OrderPlaced does not match the handler's type at `amount`"),
        "{errors:?}"
    );
    assert!(
        errors[3]
            .1
            .ends_with("bytes; the limit is 1000 (WORKER_MAX_PAYLOAD_BYTES)"),
        "{errors:?}"
    );
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct OrderShipped {
    #[allow(dead_code)]
    order_id: String,
    seq: u32,
    #[serde(default)]
    fail_until: u32,
}

#[derive(Clone, Default)]
struct Seen(Arc<std::sync::Mutex<Vec<u32>>>);

#[handler(
    event = "OrderShipped",
    retry = 5,
    partition_key = "orderId",
    partitions = 2
)]
async fn track(
    event: OrderShipped,
    ctx: &Context,
    State(seen): State<Seen>,
) -> Result<(), HandlerError> {
    if ctx.attempt() <= event.fail_until {
        return Err(HandlerError::retryable("carrier unavailable"));
    }
    seen.0.lock().unwrap().push(event.seq);
    Ok(())
}

fn shipped(order_id: &str, seq: u32, fail_until: u32) -> TestMessage {
    TestMessage::json(
        "OrderShipped",
        format!("{order_id}-{seq}"),
        &json!({"orderId": order_id, "seq": seq, "failUntil": fail_until}),
    )
    .partition_key(order_id)
}

#[tokio::test]
async fn a_partition_retries_in_place_and_keeps_its_order() {
    let seen = Seen::default();
    let mut harness = TestHarness::builder()
        .handler(track)
        .state(seen.clone())
        .build()
        .await
        .expect("harness");
    harness.publish(shipped("a", 1, 2));
    harness.publish(shipped("a", 2, 0));
    harness.publish(shipped("b", 3, 0));
    harness.publish(shipped("a", 4, 0));
    // No key: dead-lettered as poison, and blocks nobody.
    harness.publish(TestMessage::json(
        "OrderShipped",
        "no-key",
        &json!({"orderId": "c", "seq": 5}),
    ));
    harness.run_until_idle().await;
    assert_eq!(*seen.0.lock().unwrap(), [3, 1, 2, 4]);
    let a1: Vec<_> = harness
        .deliveries()
        .iter()
        .filter(|d| d.event_id.as_deref() == Some("a-1"))
        .map(|d| (d.attempt, d.outcome.name()))
        .collect();
    assert_eq!(a1, [(1, "retry"), (2, "retry"), (3, "processed")]);
    let a2 = harness
        .deliveries()
        .iter()
        .find(|d| d.event_id.as_deref() == Some("a-2"))
        .expect("a-2");
    let a1_done = harness
        .deliveries()
        .iter()
        .rfind(|d| d.event_id.as_deref() == Some("a-1"))
        .expect("a-1");
    assert!(a2.at >= a1_done.at, "a-2 waited behind a-1's retries");
    let record = &harness.dead_letters("track")[0];
    assert!(
        record
            .failure_metadata
            .last_error
            .starts_with("MissingPartitionKey"),
        "{record:?}"
    );
}

#[tokio::test]
async fn it_checks_state_and_wants_a_pool_for_dedup() {
    let error = TestHarness::builder()
        .handler(track)
        .build()
        .await
        .expect_err("no Seen given");
    assert!(
        error
            .to_string()
            .starts_with("handler `track` takes `State<harness::Seen>`"),
        "{error}"
    );
    let error = TestHarness::builder()
        .handler(charge)
        .build()
        .await
        .expect_err("no pool");
    assert!(
        matches!(error, HarnessError::PoolRequired { handler: "charge" }),
        "{error:?}"
    );
    assert!(error.to_string().contains("`.pool(pool)`"), "{error}");
}

static CHARGES: AtomicU32 = AtomicU32::new(0);

/// Dedup: writes its charge and enqueues `OrderPaid` in its transaction.
#[handler(event = "OrderPlaced", dedup, retry = 3)]
async fn charge(
    event: OrderPlaced,
    tx: &mut PgConnection,
    ctx: &Context,
) -> Result<(), HandlerError> {
    CHARGES.fetch_add(1, Ordering::SeqCst);
    sqlx::query("INSERT INTO charges (event_id, order_id, amount) VALUES ($1, $2, $3)")
        .bind(ctx.event_id())
        .bind(&event.order_id)
        .bind(event.amount)
        .execute(&mut *tx)
        .await?;
    if ctx.attempt() <= event.fail_until {
        return Err(HandlerError::retryable("after the write: must roll back"));
    }
    let paid = OutboxEvent::new(
        "OrderPaid",
        &event.order_id,
        json!({"orderId": event.order_id}),
    );
    Outbox::enqueue(tx, paid.caused_by(ctx)).await?;
    Ok(())
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct OrderPaid {
    order_id: String,
}

#[handler(event = "OrderPaid")]
async fn ship(event: OrderPaid, ctx: &Context) -> Result<(), HandlerError> {
    sqlx::query("INSERT INTO shipped (order_id) VALUES ($1)")
        .bind(&event.order_id)
        .execute(ctx.pool())
        .await?;
    Ok(())
}

/// A log sink for a test's subscriber.
#[derive(Clone, Default)]
struct Log(Arc<std::sync::Mutex<Vec<u8>>>);

impl Log {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Log {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Log {
    type Writer = Log;
    fn make_writer(&'a self) -> Log {
        self.clone()
    }
}

#[sqlx::test(migrations = false)]
async fn dedup_in_a_real_transaction_and_the_outbox_with_sqlx_test(pool: PgPool) {
    sqlx::raw_sql(
        "CREATE TABLE charges (event_id TEXT NOT NULL, order_id TEXT NOT NULL, amount BIGINT NOT NULL);
         CREATE TABLE shipped (order_id TEXT NOT NULL);",
    )
    .execute(&pool)
    .await
    .expect("tables");
    let mut harness = TestHarness::builder()
        .handler(charge)
        .handler(ship)
        .pool(pool.clone())
        .build()
        .await
        .expect("harness");
    let before = CHARGES.load(Ordering::SeqCst);
    harness.publish(TestMessage::json(
        "OrderPlaced",
        "evt_1",
        &order("o1", 10, 1),
    ));
    harness.publish(TestMessage::json(
        "OrderPlaced",
        "evt_1",
        &order("o1", 10, 1),
    ));
    let log = Log::default();
    {
        // The log a worker writes at its default level (INFO): one line per delivery that is
        // not plainly processed (sqlx::test runs the test on one thread, so a thread-local
        // subscriber sees every delivery).
        let _guard = tracing::subscriber::set_default(
            tracing_subscriber::fmt()
                .with_max_level(tracing::Level::INFO)
                .with_ansi(false)
                .with_writer(log.clone())
                .finish(),
        );
        harness.run_until_idle().await;
    }
    let log = log.text();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("evt_1")).collect();
    assert_eq!(lines.len(), 3, "two retries and the duplicate:\n{log}");
    assert_eq!(
        lines.iter().filter(|l| l.contains(" WARN ")).count(),
        2,
        "{log}"
    );
    assert!(
        lines[2].contains(" INFO ")
            && lines[2].contains("duplicate: processed before, acked without running the handler"),
        "{log}"
    );
    let outcomes: Vec<_> = harness
        .outcomes("charge", "evt_1")
        .iter()
        .map(|o| o.name())
        .collect();
    // Both copies fail once (the first attempt's write is rolled back); the first retry
    // commits, the second finds its dedup row.
    assert_eq!(outcomes, ["retry", "retry", "processed", "duplicate"]);
    assert_eq!(CHARGES.load(Ordering::SeqCst) - before, 3);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM charges")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 1, "only the committed attempt's write remains");

    let relayed = harness.relay_outbox().await.expect("relay");
    assert_eq!(relayed.len(), 1);
    assert_eq!(relayed[0].event_type, "OrderPaid");
    assert_eq!(relayed[0].aggregate_id, "o1");
    let paid: serde_json::Value = serde_json::from_str(&relayed[0].payload).unwrap();
    assert_eq!(paid, json!({"orderId": "o1"}));
    assert!(
        harness.relay_outbox().await.expect("relay").is_empty(),
        "relayed once"
    );
    harness.run_until_idle().await;
    assert_eq!(harness.deliveries().last().unwrap().handler, "ship");
    assert_eq!(
        harness.deliveries().last().unwrap().outcome,
        Outcome::Processed
    );
    let shipped: i64 = sqlx::query_scalar("SELECT count(*) FROM shipped")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(shipped, 1);

    // The database goes away: deliveries are given back, attempts are not spent.
    pool.close().await;
    harness.publish(TestMessage::json(
        "OrderPlaced",
        "evt_2",
        &order("o2", 10, 0),
    ));
    let made = harness.advance(GIVE_BACK_PAUSE * 2).await;
    assert_eq!(made.len(), 3, "{made:#?}");
    assert!(made
        .iter()
        .all(|d| d.attempt == 1 && matches!(d.outcome, Outcome::GivenBack { .. })));
}
