//! Graceful shutdown with deliveries in flight: what finishes in time is acked, what does not is
//! given back (not acked), and nothing is lost.

use std::time::Duration;

use serde_json::json;
use worker_tests::handlers::scripted;
use worker_tests::{eventually, Outcomes, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_acks_only_what_finished_and_gives_back_the_rest() {
    let mut env = TestEnv::new().await;
    env.config.shutdown_timeout = Duration::from_secs(1);
    let outcomes = Outcomes::default();
    let start = || {
        worker_rabbitmq::Worker::builder()
            .handler(scripted)
            .migrations(TestEnv::migrator())
            .observer(outcomes.clone())
            .config(env.config.clone())
            .start()
    };
    let worker = start().await.unwrap();
    env.publish_json("Scripted", "evt_quick", json!({})).await;
    env.publish_json("Scripted", "evt_medium", json!({ "sleepMs": 400 }))
        .await;
    env.publish_json("Scripted", "evt_slow", json!({ "sleepMs": 4000 }))
        .await;
    eventually("quick done, medium and slow in flight", || async {
        env.effects("evt_quick").await == 1
            && env.attempts("evt_medium").await == 1
            && env.attempts("evt_slow").await == 1
    })
    .await;

    worker.shutdown().await.unwrap();
    assert_eq!(
        env.effects("evt_medium").await,
        1,
        "finished within the deadline"
    );
    assert_eq!(outcomes.of("evt_medium"), vec![("ok", true)]);
    assert_eq!(
        env.effects("evt_slow").await,
        0,
        "not finished, rolled back"
    );
    assert_eq!(outcomes.of("evt_slow"), vec![("abandoned", false)]);
    let queue = env.queue("scripted");
    eventually("the unfinished delivery is back in the queue", || async {
        env.depth(&queue).await == 1
    })
    .await;

    // A new worker finishes it; nothing was lost and nothing done twice.
    let worker = start().await.unwrap();
    eventually("evt_slow done by the next worker", || async {
        env.effects("evt_slow").await == 1
    })
    .await;
    worker.shutdown().await.unwrap();
    for event in ["evt_quick", "evt_medium", "evt_slow"] {
        assert_eq!(env.effects(event).await, 1, "{event}");
    }
    assert_eq!(env.depth(&queue).await, 0);
}
