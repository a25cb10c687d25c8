//! Retryable failures go through the broker's delay queues on the §4 schedule, keep the consumer
//! slot free, and produce the effect once.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;
use worker_core::HandlerOverrides;
use worker_core::RetryOverrides;
use worker_tests::handlers::{scripted, scripted_plain};
use worker_tests::{eventually, TestEnv};

async fn attempt_times(env: &TestEnv, event_id: &str) -> Vec<(i32, DateTime<Utc>)> {
    sqlx::query_as("SELECT attempt, at FROM attempts WHERE event_id = $1 ORDER BY at")
        .bind(event_id)
        .fetch_all(&env.pool)
        .await
        .expect("attempts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_twice_then_succeeds_on_the_backoff_schedule_without_blocking_others() {
    let mut env = TestEnv::new().await;
    let base = Duration::from_millis(300);
    let jitter = Duration::from_millis(100);
    env.config.retry = RetryOverrides {
        base: Some(base),
        cap: Some(Duration::from_secs(5)),
        jitter: Some(jitter),
        max_attempts: None,
    };
    // One delivery at a time: if a backoff held the consumer slot, nothing else could run.
    env.config.handlers.insert(
        "scripted".into(),
        HandlerOverrides {
            concurrency: Some(1),
            ..Default::default()
        },
    );
    let worker = worker_rabbitmq::Worker::builder()
        .handler(scripted)
        .migrations(TestEnv::migrator())
        .settings(env.settings())
        .start()
        .await
        .unwrap();

    env.publish_json("Scripted", "evt_flaky", json!({ "failTimes": 2 }))
        .await;
    env.publish_json("Scripted", "evt_other", json!({})).await;

    eventually("evt_flaky succeeds", || async {
        env.effects("evt_flaky").await == 1
    })
    .await;
    eventually("evt_other succeeds", || async {
        env.effects("evt_other").await == 1
    })
    .await;
    worker.shutdown().await.unwrap();

    let times = attempt_times(&env, "evt_flaky").await;
    assert_eq!(
        times.iter().map(|(a, _)| *a).collect::<Vec<_>>(),
        vec![1, 2, 3],
        "attempt numbers seen by the handler"
    );
    let tolerance = Duration::from_millis(700);
    for k in 1..=2u32 {
        let gap = (times[k as usize].1 - times[k as usize - 1].1)
            .to_std()
            .unwrap();
        let expected = base * 2u32.pow(k - 1);
        assert!(
            gap >= expected - Duration::from_millis(10),
            "gap after failure {k} is {gap:?}, shorter than the {expected:?} delay"
        );
        assert!(
            gap <= expected + jitter + tolerance,
            "gap after failure {k} is {gap:?}, longer than {expected:?} + jitter + tolerance"
        );
    }
    let other_done: DateTime<Utc> =
        sqlx::query_scalar("SELECT at FROM effects WHERE event_id = 'evt_other'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert!(
        other_done < times[1].1,
        "evt_other ran during evt_flaky's backoff, not after it"
    );
    assert_eq!(env.effects("evt_flaky").await, 1);
    assert_eq!(env.depth(&env.queue("scripted")).await, 0);
    assert_eq!(
        env.depth(&format!("{}.dlq", env.queue("scripted"))).await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_is_a_retryable_failure_and_the_worker_keeps_running() {
    let env = TestEnv::new().await;
    let worker = worker_rabbitmq::Worker::builder()
        .handler(scripted)
        .handler(scripted_plain)
        .migrations(TestEnv::migrator())
        .settings(env.settings())
        .start()
        .await
        .unwrap();
    env.publish_json(
        "Scripted",
        "evt_panics",
        json!({ "failTimes": 1, "panic": true }),
    )
    .await;
    env.publish_json("Scripted", "evt_after", json!({})).await;
    // Both handlers (dedup and plain) get both events.
    eventually("both events succeed in both handlers", || async {
        env.effects("evt_panics").await == 2 && env.effects("evt_after").await == 2
    })
    .await;
    worker.shutdown().await.unwrap();
    assert_eq!(
        env.attempts("evt_panics").await,
        4,
        "two attempts per handler"
    );
    assert_eq!(
        env.count(
            "SELECT count(*) FROM effects WHERE event_id = 'evt_panics' AND handler = $1",
            "scripted-plain"
        )
        .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_policy_can_be_overridden_per_handler_by_configuration() {
    let mut env = TestEnv::new().await;
    env.config.handlers.insert(
        "scripted".into(),
        HandlerOverrides {
            retry: RetryOverrides {
                max_attempts: Some(5),
                ..Default::default()
            },
            ..Default::default()
        },
    );
    let worker = worker_rabbitmq::Worker::builder()
        .handler(scripted)
        .migrations(TestEnv::migrator())
        .settings(env.settings())
        .start()
        .await
        .unwrap();
    // The attribute says retry = 3; configuration allows 5, so four failures still succeed.
    env.publish_json("Scripted", "evt_four", json!({ "failTimes": 4 }))
        .await;
    eventually("evt_four succeeds on attempt 5", || async {
        env.effects("evt_four").await == 1
    })
    .await;
    worker.shutdown().await.unwrap();
    assert_eq!(env.attempts("evt_four").await, 5);
}
