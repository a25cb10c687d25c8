//! `dlq replay` killed half-way (SIGKILL) leaves every entry either replayed or still in the DLQ —
//! nothing lost — and replaying again finishes the job with each event's effect exactly once.

use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use worker_tests::handlers::scripted;
use worker_tests::{eventually, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_killed_half_way_loses_nothing() {
    let mut env = TestEnv::new().await;
    // Twelve events failing every attempt in a row is what an outage looks like: the circuit
    // breaker would slow their way to the DLQ to one per probe. This test needs them there.
    env.config.breaker.failures = Some(0);
    let worker = worker_rabbitmq::Worker::builder()
        .handler(scripted)
        .migrations(TestEnv::migrator())
        .settings(env.settings())
        .start()
        .await
        .unwrap();
    let total = 12;
    for i in 0..total {
        // Fails its 3 attempts, then succeeds when replayed.
        env.publish_json(
            "Scripted",
            &format!("evt_replay_{i:02}"),
            json!({ "failTotal": 3 }),
        )
        .await;
    }
    let dlq = format!("{}.dlq", env.queue("scripted"));
    eventually("every event dead-lettered", || async {
        env.depth(&dlq).await == total
    })
    .await;

    // Replay slowly and kill the CLI while it runs.
    let mut cli = tokio::process::Command::new(env!("CARGO_BIN_EXE_cli_worker"))
        .envs(env.worker_env())
        .args(["dlq", "replay", "--all", "--rate", "4"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the CLI");
    let effects = "SELECT count(DISTINCT event_id) FROM effects WHERE handler = $1";
    eventually("some events replayed", || async {
        env.count(effects, "scripted").await >= 3
    })
    .await;
    cli.start_kill().expect("kill the CLI");
    let _ = cli.wait().await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let replayed = env.count(effects, "scripted").await;
    let still_dead = i64::from(env.depth(&dlq).await);
    assert!(
        replayed < i64::from(total),
        "the replay was interrupted half-way ({replayed} of {total} replayed)"
    );
    assert!(
        replayed + still_dead >= i64::from(total),
        "every entry is replayed or still in the DLQ: {replayed} + {still_dead} < {total}"
    );

    // Finish the job.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_cli_worker"))
        .envs(env.worker_env())
        .args(["dlq", "replay", "--all"])
        .output()
        .await
        .expect("run the CLI");
    assert!(
        output.status.success() || output.status.code() == Some(3),
        "replay: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    eventually("every event's effect", || async {
        env.count(effects, "scripted").await == i64::from(total)
    })
    .await;
    worker.shutdown().await.unwrap();
    let doubled = env.count("SELECT count(*) FROM (SELECT event_id FROM effects GROUP BY event_id HAVING count(*) > 1) d WHERE $1 = $1", "x").await;
    assert_eq!(doubled, 0, "no effect twice");
    assert_eq!(env.depth(&dlq).await, 0, "the DLQ is empty");
}
