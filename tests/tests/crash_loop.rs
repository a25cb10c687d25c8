//! A message that kills the worker process every time is not redelivered forever: the quorum
//! work queue's delivery limit sends it to the delivery-limit queue, and the worker records it in
//! the DLQ with the reason.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::json;
use worker_core::ErrorKind;
use worker_tests::{eventually, stop_gracefully, TestEnv, PATIENCE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_crashes_the_worker_ends_in_the_dlq_with_the_reason() {
    let mut env = TestEnv::new().await;
    env.broker.delivery_limit = Some(2);
    let queue = env.queue("scripted");
    let dlq = format!("{queue}.dlq");
    let start = Instant::now();
    let mut children = 0;
    let mut published = false;
    loop {
        assert!(start.elapsed() < PATIENCE * 2, "the crash loop did not end");
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_crash_worker"))
            .envs(env.worker_env())
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn crash_worker");
        children += 1;
        if !published {
            eventually("the first child worker consumes", || async {
                env.consumers(&queue).await >= 1
            })
            .await;
            env.publish_json("Scripted", "evt_crasher", json!({ "abort": true }))
                .await;
            published = true;
        }
        // Either the child dies on the message again, or the message has reached the DLQ.
        loop {
            if child.try_wait().expect("wait").is_some() {
                break;
            }
            if env.depth(&dlq).await == 1 {
                // Stopped gracefully, not killed: the child acks the delivery-limit message right
                // after its dead-letter record is confirmed, and a kill in between would return
                // that message to its queue.
                stop_gracefully(&mut child).await;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if env.depth(&dlq).await == 1 {
            break;
        }
    }

    let records = env.wait_dead_letters("scripted", 1).await;
    let record = &records[0].1;
    let meta = &record.failure_metadata;
    assert!(
        meta.last_error.starts_with(
            "delivery limit exceeded: the broker dead-lettered this message from queue"
        ),
        "{}",
        meta.last_error
    );
    assert!(
        meta.last_error.contains("reason=delivery_limit"),
        "{}",
        meta.last_error
    );
    assert_eq!(meta.error_kind, ErrorKind::Poison);
    assert_eq!(meta.handler, "scripted");
    assert_eq!(record.original_message.id.as_deref(), Some("evt_crasher"));
    assert_eq!(record.original_message.routing_key, "Scripted");
    assert_eq!(record.original_message.exchange, env.broker.exchange);
    assert!(
        !record
            .original_message
            .properties
            .headers
            .contains_key("x-death"),
        "broker bookkeeping is not part of the original"
    );
    assert_eq!(record.original_message.payload, json!({ "abort": true }));
    let deliveries = env.attempts("evt_crasher").await;
    assert!(
        (2..=4).contains(&deliveries),
        "delivered {deliveries} times with a limit of 2 ({children} worker processes)"
    );
    let delivery_limit = format!("{queue}.delivery-limit");
    eventually("the work and delivery-limit queues are drained", || async {
        env.depth(&queue).await == 0 && env.depth(&delivery_limit).await == 0
    })
    .await;
}
