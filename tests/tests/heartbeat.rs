//! A silent peer: the worker's TCP connection stays open but no byte flows any more (a proxy in
//! front of RabbitMQ stops forwarding without closing anything). Only the AMQP heartbeat can
//! notice: the worker must give the connection up within a bounded time, go not-ready, reconnect,
//! and process what is published afterwards.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use worker_tests::handlers::scripted;
use worker_tests::silent_proxy::SilentProxy;
use worker_tests::{eventually, http_get, TestEnv};

/// Short, to keep the test short (`WORKER_HEARTBEAT`; 10 s by default).
const HEARTBEAT: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_noticed_by_the_heartbeat_and_replaced() {
    let mut env = TestEnv::new().await;
    let proxy = SilentProxy::start(std::net::SocketAddr::from(([127, 0, 0, 1], 5672))).await;
    env.broker.url = format!("amqp://guest:guest@{}/%2f", proxy.addr);
    env.broker.heartbeat = HEARTBEAT;
    let worker = worker_rabbitmq::Worker::builder()
        .handler(scripted)
        .migrations(TestEnv::migrator())
        .settings(env.settings())
        .start()
        .await
        .expect("starts through the proxy");
    let addr = worker.metrics_addr().expect("endpoint on");
    env.publish_json("Scripted", "evt_before", json!({})).await;
    eventually("the first event is processed", || async {
        env.effects("evt_before").await == 1
    })
    .await;
    eventually("ready", || async {
        http_get(addr, "/readyz").await.0 == 200
    })
    .await;
    let connections = proxy.accepted();

    // Watch readiness from now on: the not-ready window (the reconnect backoff) is short.
    let went_unready = Arc::new(AtomicBool::new(false));
    let watcher = {
        let went_unready = Arc::clone(&went_unready);
        tokio::spawn(async move {
            loop {
                let (status, body) = http_get(addr, "/readyz").await;
                if status == 503 && body.contains("not connected to RabbitMQ") {
                    went_unready.store(true, Ordering::SeqCst);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    proxy.silence();
    let silenced_at = Instant::now();
    // lapin gives up after two heartbeat intervals without a byte, checked every half interval;
    // the reconnect waits 0.5-0.75 s first. Bound: 3 intervals plus slack.
    let bound = 3 * HEARTBEAT + Duration::from_secs(3);
    while proxy.accepted() == connections {
        assert!(
            silenced_at.elapsed() < bound,
            "no new connection within {bound:?} of the peer going silent: the heartbeat did not \
             notice"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let noticed = silenced_at.elapsed();
    eprintln!("silent peer replaced after {noticed:?} (heartbeat {HEARTBEAT:?}, bound {bound:?})");
    assert!(
        noticed >= HEARTBEAT,
        "reconnected after {noticed:?}, before a heartbeat could have been missed: something \
         else closed the connection"
    );

    eventually("ready again after reconnecting", || async {
        http_get(addr, "/readyz").await.0 == 200
    })
    .await;
    assert!(
        went_unready.load(Ordering::SeqCst),
        "/readyz reported not-ready while the connection was being replaced"
    );
    watcher.abort();

    env.publish_json("Scripted", "evt_after", json!({})).await;
    eventually(
        "an event published after the reconnect is processed",
        || async { env.effects("evt_after").await == 1 },
    )
    .await;
    worker.shutdown().await.unwrap();
    assert_eq!(env.effects("evt_before").await, 1);
}
