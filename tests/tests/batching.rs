//! Batched dedup transactions: several deliveries of one dedup handler in one transaction, a
//! savepoint each. A poison and a retryable event inside a batch go their own ways while the
//! others commit; duplicates inside one batch run the handler once; a crash between the commit
//! and the ack redelivers the batch, and dedup recognises every event of it.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use worker_core::transport::dedup::DedupStore;
use worker_core::transport::dedup::Identifier;
use worker_core::transport::message::Properties;
use worker_core::transport::observer::NoopObserver;
use worker_core::transport::pipeline::process_batch;
use worker_core::transport::pipeline::Disposition;
use worker_core::transport::pipeline::Runtime;
use worker_core::transport::CoreSpans;
use worker_core::{Handler, InboundMessage};
use worker_rabbitmq::Worker;
use worker_tests::handlers::scripted;
use worker_tests::{eventually, wait_for_abort, Outcomes, TestEnv, PATIENCE};

/// The sizes of the committed dedup transactions.
#[derive(Debug, Clone, Default)]
struct Batches(Arc<Mutex<Vec<usize>>>);

impl worker_core::Observer for Batches {
    fn batch_committed(&self, _handler: &str, size: usize) {
        self.0.lock().expect("not poisoned").push(size);
    }
}

impl Batches {
    fn largest(&self) -> usize {
        self.0
            .lock()
            .expect("not poisoned")
            .iter()
            .copied()
            .max()
            .unwrap_or(0)
    }
}

fn scripted_message(event_id: &str, payload: serde_json::Value) -> InboundMessage {
    InboundMessage {
        exchange: "events.test".into(),
        routing_key: "Scripted".into(),
        redelivered: false,
        body: serde_json::to_vec(&payload).expect("json"),
        properties: Properties {
            message_id: Some(event_id.into()),
            kind: Some("Scripted".into()),
            ..Properties::default()
        },
    }
}

async fn dedup_rows(env: &TestEnv) -> Vec<String> {
    sqlx::query_scalar("SELECT event_id FROM processed_events ORDER BY event_id")
        .fetch_all(&env.pool)
        .await
        .expect("read processed_events")
}

/// The pipeline alone, on one batch built by hand: every case in one transaction, decided as
/// each would be on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_batch_settles_each_event_on_its_own() {
    let env = TestEnv::new().await;
    let dedup = DedupStore::new(Identifier::new(&env.id).expect("test ids are identifiers"));
    dedup.migrate(&env.pool).await.expect("dedup table");
    TestEnv::migrator()
        .run(&env.pool)
        .await
        .expect("test tables");
    let runtime = Runtime {
        pool: Some(env.pool.clone()),
        dedup,
        consumer: "batching-test".into(),
        observer: Arc::new(NoopObserver),
        max_payload_bytes: 4 * 1024 * 1024,
        spans: Arc::new(CoreSpans),
        states: worker_core::transport::pipeline::States::new(),
        clock: worker_core::transport::pipeline::Clock::system(),
        jitter: worker_core::transport::pipeline::Jitter::random(),
        max_retry_after: worker_core::transport::config::DEFAULT_MAX_RETRY_AFTER,
        error_policies: Default::default(),
        upcasters: Default::default(),
    };
    let spec = Handler::spec(&scripted);
    let batch = [
        scripted_message("ok-1", json!({})),
        scripted_message("ok-1", json!({})), // the same event twice in one batch
        scripted_message("poison", json!({"poison": true})),
        scripted_message("flaky", json!({"failTimes": 1})),
        scripted_message("panics", json!({"failTimes": 1, "panic": true})),
        scripted_message("not-json", json!("a string, not a Scripted object")),
        scripted_message(
            "writes-then-fails",
            json!({"failTimes": 1, "failAfterEffect": true}),
        ),
        scripted_message("ok-2", json!({})),
    ];
    let dispositions = process_batch(&scripted, &spec, &runtime, &batch).await;
    let outcomes: Vec<&str> = dispositions.iter().map(Disposition::outcome_name).collect();
    assert_eq!(
        outcomes,
        [
            "ok",
            "duplicate",
            "dead_letter",
            "retry",
            "retry",
            "dead_letter",
            "retry",
            "ok"
        ]
    );
    for (i, id) in [(2, "poison"), (5, "not-json")] {
        let Disposition::DeadLetter { record, .. } = &dispositions[i] else {
            unreachable!("checked above");
        };
        assert_eq!(record.original_message.id.as_deref(), Some(id));
        assert_eq!(record.failure_metadata.error_kind.as_str(), "poison");
    }
    assert_eq!(
        dedup_rows(&env).await,
        ["ok-1", "ok-2"],
        "only the events that succeeded keep their claim"
    );
    for id in ["ok-1", "ok-2"] {
        assert_eq!(env.effects(id).await, 1, "{id}: effect once");
        assert_eq!(env.attempts(id).await, 1, "{id}: the handler ran once");
    }
    for id in ["poison", "flaky", "panics", "writes-then-fails"] {
        assert_eq!(env.effects(id).await, 0, "{id}: its writes rolled back");
        assert_eq!(env.attempts(id).await, 1, "{id}: the handler ran once");
    }

    // The retry copies come back in a later batch, with a redelivery of an event already done.
    let retried: Vec<InboundMessage> = [3, 4, 6]
        .iter()
        .map(|&i| match &dispositions[i] {
            Disposition::Retry { message, .. } => InboundMessage {
                exchange: String::new(),
                routing_key: "scripted".into(),
                redelivered: false,
                body: message.body.clone(),
                properties: message.properties.clone(),
            },
            other => panic!("expected a retry, got {other:?}"),
        })
        .chain([scripted_message("ok-2", json!({}))])
        .collect();
    let dispositions = process_batch(&scripted, &spec, &runtime, &retried).await;
    let outcomes: Vec<&str> = dispositions.iter().map(Disposition::outcome_name).collect();
    assert_eq!(outcomes, ["ok", "ok", "ok", "duplicate"]);
    assert_eq!(
        dedup_rows(&env).await,
        ["flaky", "ok-1", "ok-2", "panics", "writes-then-fails"]
    );
    for id in ["flaky", "panics", "writes-then-fails", "ok-2"] {
        assert_eq!(env.effects(id).await, 1, "{id}: effect once");
    }
}

/// A backlog through the real broker: batches form, and a poison, a retryable and duplicate
/// deliveries among them are settled as each would be alone; every delivery is acked once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_is_processed_in_batches_with_failures_and_duplicates_inside() {
    let env = TestEnv::new().await;
    let mut config = env.config.clone();
    config.batch_size = Some(8);
    // A short linger makes the batches independent of how fast the deliveries arrive.
    config.batch_linger = Duration::from_millis(50);
    let builder = || {
        Worker::builder()
            .handler(scripted)
            .migrations(TestEnv::migrator())
            .config(config.clone())
            .broker(env.broker.clone())
    };
    // Declare the topology, then build a backlog while no worker consumes.
    builder().start().await.unwrap().shutdown().await.unwrap();
    let mut expected: HashMap<String, usize> = HashMap::new();
    for i in 0..60 {
        let id = format!("evt-{i:02}");
        let payload = match i {
            7 => json!({"poison": true}),
            13 => json!({"failTimes": 1}),
            21 => json!({"failTimes": 1, "panic": true}),
            _ => json!({}),
        };
        let copies = if i == 30 || i == 44 { 2 } else { 1 };
        for _ in 0..copies {
            env.publish_json("Scripted", &id, payload.clone()).await;
        }
        expected.insert(id, copies);
    }
    let queue = env.queue("scripted");
    assert_eq!(env.depth(&queue).await, 62, "the backlog is in the queue");

    let outcomes = Outcomes::default();
    let batches = Batches::default();
    let worker = builder()
        .observer(outcomes.clone())
        .observer(batches.clone())
        .start()
        .await
        .unwrap();
    let started = Instant::now();
    eventually("every event is settled", || async {
        env.count(
            "SELECT count(DISTINCT event_id) FROM effects WHERE handler = $1",
            "scripted",
        )
        .await
            == 59
    })
    .await;
    let dead = env.wait_dead_letters("scripted", 1).await;
    eventually("the queue is drained", || async {
        env.depth(&queue).await == 0
    })
    .await;
    worker.shutdown().await.unwrap();
    assert!(started.elapsed() < PATIENCE);

    assert!(
        batches.largest() > 1,
        "deliveries shared transactions: {:?}",
        batches.0.lock().unwrap()
    );
    assert_eq!(dead[0].1.original_message.id.as_deref(), Some("evt-07"));
    for (id, copies) in &expected {
        let seen = outcomes.of(id);
        assert!(
            seen.iter().all(|(_, acked)| *acked),
            "{id}: every delivery acked: {seen:?}"
        );
        match id.as_str() {
            "evt-07" => {
                assert_eq!(seen, [("dead_letter", true)]);
                assert_eq!(env.effects(id).await, 0);
            }
            "evt-13" | "evt-21" => {
                assert_eq!(seen, [("retry", true), ("ok", true)], "{id}");
                assert_eq!(env.effects(id).await, 1, "{id}");
                assert_eq!(env.attempts(id).await, 2, "{id}: failed once, then done");
            }
            _ => {
                let mut expected_outcomes = vec![("ok", true)];
                expected_outcomes.extend((1..*copies).map(|_| ("duplicate", true)));
                let mut sorted = seen.clone();
                sorted.sort_by_key(|(outcome, _)| *outcome != "ok");
                assert_eq!(sorted, expected_outcomes, "{id}: no redelivery, one run");
                assert_eq!(env.effects(id).await, 1, "{id}: effect once");
                assert_eq!(env.attempts(id).await, 1, "{id}: the handler ran once");
            }
        }
    }
}

/// The worker process aborts right after a batch commits, before any ack: the whole batch is
/// redelivered, and each of its events is recognised as a duplicate; nothing runs twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_the_batch_commit_and_its_ack_is_deduplicated() {
    let env = TestEnv::new().await;
    let builder = || {
        Worker::builder()
            .handler(scripted)
            .migrations(TestEnv::migrator())
            .settings(env.settings())
    };
    builder().start().await.unwrap().shutdown().await.unwrap();
    for i in 0..20 {
        env.publish_json("Scripted", &format!("crash-{i:02}"), json!({}))
            .await;
    }
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_crash_worker"))
        .envs(env.worker_env())
        .env("CRASH_AFTER_COMMIT", "1")
        .env("WORKER_BATCH_SIZE", "10")
        // One batch in flight: nothing else has run when the first batch commits.
        .env("WORKER_HANDLER_SCRIPTED_CONCURRENCY", "10")
        .env("WORKER_BATCH_LINGER", "300ms")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn crash_worker");
    wait_for_abort(&mut child).await;
    let committed: Vec<String> =
        sqlx::query_scalar("SELECT event_id FROM effects ORDER BY event_id")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert!(
        committed.len() > 1,
        "a batch of several events committed before the abort: {committed:?}"
    );
    let queue = env.queue("scripted");
    eventually("every unacked delivery is back in the queue", || async {
        env.depth(&queue).await == 20
    })
    .await;

    let outcomes = Outcomes::default();
    let worker = builder().observer(outcomes.clone()).start().await.unwrap();
    eventually("all 20 are settled", || async {
        outcomes.0.lock().unwrap().len() == 20
    })
    .await;
    worker.shutdown().await.unwrap();
    for i in 0..20 {
        let id = format!("crash-{i:02}");
        let expected = if committed.contains(&id) {
            "duplicate"
        } else {
            "ok"
        };
        assert_eq!(outcomes.of(&id), [(expected, true)], "{id}");
        assert_eq!(env.effects(&id).await, 1, "{id}: effect once");
        assert_eq!(env.attempts(&id).await, 1, "{id}: the handler ran once");
    }
    assert_eq!(env.depth(&queue).await, 0);
}
