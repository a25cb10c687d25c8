//! Broker connection loss: the worker reconnects, re-declares and resumes every handler by
//! itself, and a handler that finished while the connection was gone is not lost — its
//! redelivery is recognised as a duplicate.

use serde_json::json;
use worker_tests::handlers::{scripted, scripted_plain};
use worker_tests::{close_connections_named, eventually, Outcomes, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_is_recovered_and_in_flight_work_is_deduplicated() {
    let mut env = TestEnv::new().await;
    env.config.consumer = format!("worker-tests-{}", env.id);
    let outcomes = Outcomes::default();
    let worker = worker_rabbitmq::Worker::builder()
        .handler(scripted)
        .handler(scripted_plain)
        .migrations(TestEnv::migrator())
        .observer(outcomes.clone())
        .settings(env.settings())
        .start()
        .await
        .unwrap();

    // In flight in both handlers when the connection goes away: long enough to outlast
    // `rabbitmqctl` closing the connection (seconds on a loaded machine).
    env.publish_json("Scripted", "evt_inflight", json!({ "sleepMs": 6000 }))
        .await;
    eventually("both handlers started", || async {
        env.attempts("evt_inflight").await == 2
    })
    .await;
    assert_eq!(
        close_connections_named(&env.config.consumer),
        1,
        "the worker's connection was closed"
    );
    assert_eq!(
        env.effects("evt_inflight").await,
        0,
        "the handlers were still in flight when the connection closed (the test's premise)"
    );

    // The dedup handler's transaction commits after the connection died; its ack cannot reach the
    // broker, which redelivers on the new connection, where it is a duplicate.
    eventually("the redelivery is recognised as a duplicate", || async {
        outcomes
            .of("evt_inflight")
            .iter()
            .filter(|o| o.0 == "duplicate")
            .count()
            == 1
    })
    .await;
    // Every handler consumes again, without a restart.
    env.publish_json("Scripted", "evt_after", json!({})).await;
    eventually("both handlers process new events", || async {
        env.effects("evt_after").await == 2
    })
    .await;
    worker.shutdown().await.unwrap();

    let dedup_effects = env
        .count(
            "SELECT count(*) FROM effects WHERE event_id = 'evt_inflight' AND handler = $1",
            "scripted",
        )
        .await;
    assert_eq!(dedup_effects, 1, "the dedup handler's effect happened once");
    // The non-dedup handler ran once per delivery it received (at-least-once): twice here.
    let plain_runs = env
        .count(
            "SELECT count(*) FROM attempts WHERE event_id = 'evt_inflight' AND handler = $1",
            "scripted-plain",
        )
        .await;
    assert_eq!(plain_runs, 2, "redelivered to the handler without dedup");
    assert_eq!(env.depth(&env.queue("scripted")).await, 0);
    assert_eq!(env.depth(&env.queue("scripted-plain")).await, 0);
}
