//! When the retry copy or the dead-letter record cannot be published (here: its queue was
//! deleted, so the broker returns the message), the delivery is never acked: it stays in the
//! work queue instead of being lost.

use lapin::options::QueueDeleteOptions;
use serde_json::json;
use worker_tests::handlers::scripted;
use worker_tests::{eventually, Outcomes, TestEnv};

async fn delete_queue(env: &TestEnv, queue: &str) {
    env.channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await
        .expect("delete queue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returned_retry_copies_and_dead_letters_leave_the_delivery_in_the_queue() {
    let env = TestEnv::new().await;
    let outcomes = Outcomes::default();
    let worker = worker_rabbitmq::Worker::builder()
        .handler(scripted)
        .migrations(TestEnv::migrator())
        .observer(outcomes.clone())
        .settings(env.settings())
        .start()
        .await
        .unwrap();
    let queue = env.queue("scripted");
    delete_queue(&env, &format!("{queue}.retry.1")).await;
    delete_queue(&env, &format!("{queue}.dlq")).await;

    env.publish_json("Scripted", "evt_retry", json!({ "failTimes": 5 }))
        .await;
    env.publish_json("Scripted", "evt_poison", json!({ "poison": true }))
        .await;
    eventually("both deliveries failed to settle twice", || async {
        outcomes.of("evt_retry").len() >= 2 && outcomes.of("evt_poison").len() >= 2
    })
    .await;
    worker.shutdown().await.unwrap();

    assert!(
        outcomes
            .of("evt_retry")
            .iter()
            .all(|o| *o == ("retry", false)),
        "{:?}",
        outcomes.of("evt_retry")
    );
    assert!(
        outcomes
            .of("evt_poison")
            .iter()
            .all(|o| *o == ("dead_letter", false)),
        "{:?}",
        outcomes.of("evt_poison")
    );
    eventually("both messages are still in the work queue", || async {
        env.depth(&queue).await == 2
    })
    .await;
    // The attempt count did not advance: every try was attempt 1.
    let max_attempt: i32 = sqlx::query_scalar("SELECT max(attempt) FROM attempts")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(max_attempt, 1);
}
