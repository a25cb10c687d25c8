//! Bad input never crashes the worker or loops: forged and malformed attempt counts, header values
//! of unexpected types, malformed trace context and very large header tables are each handled,
//! and the worker keeps consuming.

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;
use serde_json::json;
use worker_core::ErrorKind;
use worker_tests::handlers::scripted;
use worker_tests::{eventually, text, TestEnv};

fn with_headers(event_id: &str, headers: FieldTable) -> BasicProperties {
    BasicProperties::default()
        .with_message_id(ShortString::from(event_id))
        .with_headers(headers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_counts_odd_header_types_and_huge_tables_are_survived() {
    let env = TestEnv::new().await;
    let worker = worker_rabbitmq::Worker::builder()
        .handler(scripted)
        .migrations(TestEnv::migrator())
        .settings(env.settings())
        .start()
        .await
        .unwrap();

    // A forged, huge attempt count on a failing event: clamped, so it still gets one attempt and
    // is then dead-lettered with the handler's full count, instead of skipping work.
    let mut forged = FieldTable::default();
    forged.insert(
        ShortString::from("x-worker-attempts"),
        AMQPValue::LongLongInt(i64::MAX),
    );
    env.publish(
        "Scripted",
        br#"{"failTimes": 99}"#,
        with_headers("evt_forged_huge", forged),
    )
    .await;
    // Negative and non-numeric counts read as 0: a normal first attempt.
    for (id, value) in [
        ("evt_negative", AMQPValue::LongInt(-7)),
        ("evt_nonnumeric", text("three")),
        ("evt_bool", AMQPValue::Boolean(true)),
    ] {
        let mut headers = FieldTable::default();
        headers.insert(ShortString::from("x-worker-attempts"), value);
        env.publish("Scripted", b"{}", with_headers(id, headers))
            .await;
    }
    // traceparent of an unexpected type, and malformed.
    let mut odd_trace = FieldTable::default();
    odd_trace.insert(ShortString::from("traceparent"), AMQPValue::LongLongInt(42));
    env.publish("Scripted", b"{}", with_headers("evt_trace_int", odd_trace))
        .await;
    let mut bad_trace = FieldTable::default();
    bad_trace.insert(
        ShortString::from("traceparent"),
        text("00-zzzz-not-a-trace"),
    );
    bad_trace.insert(
        ShortString::from("tracestate"),
        AMQPValue::FieldArray(vec![AMQPValue::Void].into()),
    );
    env.publish("Scripted", b"{}", with_headers("evt_trace_bad", bad_trace))
        .await;
    // traceparent as bytes (some clients send byte arrays).
    let mut byte_trace = FieldTable::default();
    byte_trace.insert(
        ShortString::from("traceparent"),
        AMQPValue::ByteArray(
            b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
                .to_vec()
                .into(),
        ),
    );
    env.publish(
        "Scripted",
        br#"{"poison": true}"#,
        with_headers("evt_trace_bytes", byte_trace),
    )
    .await;
    // A very large header table.
    let mut big = FieldTable::default();
    for i in 0..2000 {
        big.insert(
            ShortString::from(format!("h{i}")),
            AMQPValue::LongString(LongString::from(format!("value-{i}"))),
        );
    }
    env.publish("Scripted", b"{}", with_headers("evt_big_headers", big))
        .await;

    eventually("every good event processed", || async {
        let mut done = true;
        for id in [
            "evt_negative",
            "evt_nonnumeric",
            "evt_bool",
            "evt_trace_int",
            "evt_trace_bad",
            "evt_big_headers",
        ] {
            done &= env.effects(id).await == 1;
        }
        done
    })
    .await;
    let mut records = env.wait_dead_letters("scripted", 2).await;
    worker.shutdown().await.unwrap();

    for id in ["evt_negative", "evt_nonnumeric", "evt_bool"] {
        let attempts: Vec<i32> =
            sqlx::query_scalar("SELECT attempt FROM attempts WHERE event_id = $1")
                .bind(id)
                .fetch_all(&env.pool)
                .await
                .unwrap();
        assert_eq!(attempts, vec![1], "{id}: a malformed count reads as 0");
    }
    records.sort_by_key(|(_, r)| r.original_message.id.clone());
    let forged = &records[0].1;
    assert_eq!(
        forged.original_message.id.as_deref(),
        Some("evt_forged_huge")
    );
    assert_eq!(
        env.attempts("evt_forged_huge").await,
        1,
        "the forged count still got one real attempt"
    );
    assert_eq!(
        forged.failure_metadata.attempts, 3,
        "clamped to the handler's retry = 3"
    );
    assert_eq!(forged.failure_metadata.error_kind, ErrorKind::Retryable);
    let bytes = &records[1].1;
    assert_eq!(
        bytes.original_message.id.as_deref(),
        Some("evt_trace_bytes")
    );
    assert_eq!(
        bytes.failure_metadata.trace_id, "0af7651916cd43dd8448eb211c80319c",
        "a byte-array traceparent is continued"
    );
}

/// An event nobody handles is dropped by the broker (no queue is bound for its routing key); the
/// producer learns about it only if it publishes with `mandatory`, as this shows. The worker never
/// sees such a message, so there is nothing for it to record (documented in the README).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_nobody_handles_is_returned_to_a_mandatory_publisher() {
    let env = TestEnv::new().await;
    let worker = worker_rabbitmq::Worker::builder()
        .handler(scripted)
        .migrations(TestEnv::migrator())
        .settings(env.settings())
        .start()
        .await
        .unwrap();
    let confirm = env
        .channel
        .basic_publish(
            env.broker.exchange.as_str().into(),
            "NobodyHandlesThis".into(),
            lapin::options::BasicPublishOptions {
                mandatory: true,
                immediate: false,
            },
            b"{}",
            BasicProperties::default().with_message_id(ShortString::from("evt_orphan")),
        )
        .await
        .unwrap();
    let confirmation = confirm.await.unwrap();
    assert!(
        confirmation.take_message().is_some(),
        "the broker returned the unroutable event to its producer"
    );
    env.publish_json("Scripted", "evt_fine", json!({})).await;
    eventually("the worker is unaffected", || async {
        env.effects("evt_fine").await == 1
    })
    .await;
    worker.shutdown().await.unwrap();
}

/// A payload over the configured size limit is dead-lettered as poison, undecoded, with the sizes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_over_the_size_limit_is_dead_lettered_with_the_sizes() {
    let mut env = TestEnv::new().await;
    env.config.max_payload_bytes = 1024;
    let worker = worker_rabbitmq::Worker::builder()
        .handler(scripted)
        .migrations(TestEnv::migrator())
        .settings(env.settings())
        .start()
        .await
        .unwrap();
    let big = json!({ "padding": "x".repeat(2000) }).to_string();
    env.publish(
        "Scripted",
        big.as_bytes(),
        BasicProperties::default().with_message_id(ShortString::from("evt_big")),
    )
    .await;
    env.publish_json("Scripted", "evt_small", json!({})).await;
    let records = env.wait_dead_letters("scripted", 1).await;
    eventually("the worker keeps consuming", || async {
        env.effects("evt_small").await == 1
    })
    .await;
    worker.shutdown().await.unwrap();
    let meta = &records[0].1.failure_metadata;
    assert_eq!(
        meta.last_error,
        format!(
            "payload is {} bytes; the limit is 1024 (WORKER_MAX_PAYLOAD_BYTES)",
            big.len()
        )
    );
    assert_eq!(meta.error_kind, ErrorKind::Poison);
    assert_eq!(
        records[0].1.original_message.original_body().unwrap(),
        big.as_bytes(),
        "kept losslessly"
    );
    assert_eq!(env.attempts("evt_big").await, 0, "the handler never saw it");
}
