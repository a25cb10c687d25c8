//! A worker process killed after its transaction committed but before the ack: the broker
//! redelivers, the redelivery is recognised as a duplicate, and the effect happens once.

use std::process::Stdio;

use serde_json::json;
use worker_tests::handlers::scripted;
use worker_tests::{eventually, wait_for_abort, Outcomes, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_between_commit_and_ack_is_deduplicated_on_redelivery() {
    let env = TestEnv::new().await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_crash_worker"))
        .envs(env.worker_env())
        .env("CRASH_AFTER_COMMIT", "1")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn crash_worker");
    let queue = env.queue("scripted");
    eventually("the child worker consumes", || async {
        env.consumers(&queue).await >= 1
    })
    .await;

    env.publish_json("Scripted", "evt_crash", json!({})).await;
    wait_for_abort(&mut child).await;
    assert_eq!(
        env.effects("evt_crash").await,
        1,
        "the transaction committed before the abort"
    );
    eventually("the unacked delivery is back in the queue", || async {
        env.depth(&queue).await == 1
    })
    .await;

    let outcomes = Outcomes::default();
    let worker = worker_rabbitmq::Worker::builder()
        .handler(scripted)
        .migrations(TestEnv::migrator())
        .observer(outcomes.clone())
        .settings(env.settings())
        .start()
        .await
        .unwrap();
    eventually("the redelivery is settled", || async {
        !outcomes.of("evt_crash").is_empty()
    })
    .await;
    worker.shutdown().await.unwrap();

    assert_eq!(outcomes.of("evt_crash"), vec![("duplicate", true)]);
    assert_eq!(env.effects("evt_crash").await, 1, "effect once");
    assert_eq!(
        env.attempts("evt_crash").await,
        1,
        "the handler did not run again"
    );
    assert_eq!(env.depth(&queue).await, 0);
}
