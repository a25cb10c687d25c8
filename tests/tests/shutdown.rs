//! Graceful shutdown with deliveries in flight: what finishes in time is acked, what does not is
//! given back (not acked), and nothing is lost.

use std::time::Duration;

use serde_json::json;
use worker_tests::handlers::scripted;
use worker_tests::{eventually, Outcomes, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_acks_only_what_finished_and_gives_back_the_rest() {
    let mut env = TestEnv::new().await;
    env.config.shutdown_timeout = Duration::from_secs(5);
    let outcomes = Outcomes::default();
    let start = || {
        worker_rabbitmq::Worker::builder()
            .handler(scripted)
            .migrations(TestEnv::migrator())
            .observer(outcomes.clone())
            .settings(env.settings())
            .start()
    };
    let worker = start().await.unwrap();
    env.publish_json("Scripted", "evt_quick", json!({})).await;
    env.publish_json("Scripted", "evt_medium", json!({ "sleepMs": 400 }))
        .await;
    // Far longer than the deadline (5 s) plus the time the test may take to see all three in
    // flight on a loaded machine: only then does "not finished" hold whatever the scheduling.
    env.publish_json("Scripted", "evt_slow", json!({ "sleepMs": 15000 }))
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

/// Under load, SIGINT starts a graceful stop and a second SIGINT forces it: the process exits
/// promptly, every delivery is either done or back in the queue (nothing acked that was not
/// done), and a later worker finishes the rest exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_forces_the_stop_without_acking_unfinished_work() {
    let env = TestEnv::new().await;
    let queue = env.queue("scripted");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_crash_worker"))
        .envs(env.worker_env())
        .env("WORKER_SHUTDOWN_TIMEOUT", "60s")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn a worker process");
    eventually("the worker consumes", || async {
        env.consumers(&queue).await >= 1
    })
    .await;
    let total = 60;
    for i in 0..total {
        env.publish_json(
            "Scripted",
            &format!("evt_load_{i}"),
            json!({ "sleepMs": 1500 }),
        )
        .await;
    }
    eventually("deliveries in flight", || async {
        env.count(
            "SELECT count(*) FROM attempts WHERE handler = $1",
            "scripted",
        )
        .await
            >= 8
    })
    .await;
    let pid = child.id().expect("running").to_string();
    let signal = || {
        std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .expect("kill")
    };
    signal();
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal();
    let started = std::time::Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the forced stop is prompt")
        .expect("exit status");
    assert!(status.success(), "the worker exits cleanly: {status:?}");
    assert!(started.elapsed() < Duration::from_secs(30));

    let done = env
        .count(
            "SELECT count(DISTINCT event_id) FROM effects WHERE handler = $1",
            "scripted",
        )
        .await;
    let back = env.depth(&queue).await as i64;
    assert!(
        done + back >= total,
        "every event is done or back in the queue: {done} done + {back} queued < {total}"
    );
    assert!(back > 0, "the forced stop gave unfinished deliveries back");

    let worker = worker_rabbitmq::Worker::builder()
        .handler(scripted)
        .migrations(TestEnv::migrator())
        .settings(env.settings())
        .start()
        .await
        .unwrap();
    eventually("a later worker finishes the rest", || async {
        env.count(
            "SELECT count(DISTINCT event_id) FROM effects WHERE handler = $1",
            "scripted",
        )
        .await
            == total
    })
    .await;
    worker.shutdown().await.unwrap();
    let duplicated = env.count("SELECT count(*) FROM (SELECT event_id FROM effects GROUP BY event_id HAVING count(*) > 1) d WHERE $1 = $1", "x").await;
    assert_eq!(duplicated, 0, "no effect twice");
}
