//! A database outage is not the message's fault: deliveries whose transaction cannot begin are
//! held (no attempt spent, nothing dead-lettered, nothing requeued against the delivery limit)
//! and processed once the database answers; a connection dropped mid-transaction is a plain
//! retryable failure. The outage is simulated with a TCP proxy between the worker and Postgres.

use std::time::Duration;

use serde_json::json;
use worker_tests::handlers::scripted;
use worker_tests::{eventually, http_get, TcpProxy, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_pauses_processing_and_spends_no_attempts() {
    let mut env = TestEnv::new().await;
    let proxy = TcpProxy::start(std::net::SocketAddr::from(([127, 0, 0, 1], 5432))).await;
    env.config.database_url = format!("postgres://postgres@{}/postgres", proxy.addr);
    let worker = worker_rabbitmq::Worker::builder()
        .handler(scripted)
        .migrations(TestEnv::migrator())
        .settings(env.settings())
        .start()
        .await
        .unwrap();
    let addr = worker.metrics_addr().expect("endpoint on");
    eventually("ready", || async {
        http_get(addr, "/readyz").await.0 == 200
    })
    .await;

    // One delivery is mid-transaction when the database goes away.
    env.publish_json("Scripted", "evt_mid", json!({ "sleepMs": 800 }))
        .await;
    eventually("evt_mid is in its transaction", || async {
        env.attempts("evt_mid").await == 1
    })
    .await;
    proxy.take_down();
    // These arrive during the outage.
    for i in 0..3 {
        env.publish_json("Scripted", &format!("evt_during_{i}"), json!({}))
            .await;
    }
    eventually("readiness reports the database", || async {
        let (status, body) = http_get(addr, "/readyz").await;
        status == 503 && body.contains("database")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let queue = env.queue("scripted");
    assert_eq!(
        env.depth(&format!("{queue}.dlq")).await,
        0,
        "nothing dead-lettered during the outage"
    );

    proxy.restore();
    eventually("everything processed after the outage", || async {
        let mut done = env.effects("evt_mid").await == 1;
        for i in 0..3 {
            done &= env.effects(&format!("evt_during_{i}")).await == 1;
        }
        done
    })
    .await;
    eventually("ready again", || async {
        http_get(addr, "/readyz").await.0 == 200
    })
    .await;
    worker.shutdown().await.unwrap();

    for i in 0..3 {
        let event = format!("evt_during_{i}");
        let attempts: Vec<i32> =
            sqlx::query_scalar("SELECT attempt FROM attempts WHERE event_id = $1")
                .bind(&event)
                .fetch_all(&env.pool)
                .await
                .unwrap();
        assert_eq!(
            attempts,
            vec![1],
            "{event}: processed on its first attempt; waiting for the database spent none"
        );
    }
    let mid: Vec<i32> = sqlx::query_scalar(
        "SELECT attempt FROM attempts WHERE event_id = 'evt_mid' ORDER BY attempt",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        mid,
        vec![1, 2],
        "the transaction cut mid-way was a retryable failure, retried once"
    );
    assert_eq!(env.depth(&format!("{queue}.dlq")).await, 0);
    assert_eq!(env.depth(&queue).await, 0);
}
