//! Poison and exhausted events become complete dead-letter records (`docs/contracts.md` §5), bad
//! envelopes too, and the worker keeps consuming.

use chrono::Utc;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;
use serde_json::json;
use worker_core::transport::message::HeaderValue;
use worker_core::ErrorKind;
use worker_tests::handlers::scripted;
use worker_tests::{eventually, text, TestEnv};

async fn start(env: &TestEnv) -> worker_rabbitmq::RunningWorker {
    worker_rabbitmq::Worker::builder()
        .handler(scripted)
        .migrations(TestEnv::migrator())
        .settings(env.settings())
        .start()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_is_dead_lettered_after_one_attempt_with_every_field() {
    let env = TestEnv::new().await;
    let worker = start(&env).await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut headers = FieldTable::default();
    headers.insert(ShortString::from("traceparent"), text(traceparent));
    let properties = BasicProperties::default()
        .with_message_id(ShortString::from("evt_poison"))
        .with_correlation_id(ShortString::from("corr-1"))
        .with_headers(headers);
    env.publish("Scripted", br#"{"poison": true}"#, properties)
        .await;

    let records = env.wait_dead_letters("scripted", 1).await;
    env.publish_json("Scripted", "evt_fine", json!({})).await;
    eventually("the worker keeps consuming", || async {
        env.effects("evt_fine").await == 1
    })
    .await;
    worker.shutdown().await.unwrap();

    let (properties, record) = &records[0];
    let original = &record.original_message;
    let meta = &record.failure_metadata;
    assert_eq!(original.id.as_deref(), Some("evt_poison"));
    assert_eq!(original.kind, "Scripted");
    assert_eq!(original.payload, json!({ "poison": true }));
    assert_eq!(original.routing_key, "Scripted");
    assert_eq!(original.exchange, env.broker.exchange);
    assert_eq!(original.headers["traceparent"], traceparent);
    assert_eq!(meta.attempts, 1);
    assert_eq!(meta.error_kind, ErrorKind::Poison);
    assert_eq!(
        meta.last_error,
        "ScriptedPoison: this event can never succeed"
    );
    assert_eq!(meta.handler, "scripted");
    assert_eq!(meta.consumer, "worker-tests-0.1.0");
    assert_eq!(
        meta.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736",
        "traceId is the producer's trace"
    );
    assert!(meta.first_failed_at <= meta.last_failed_at && meta.last_failed_at <= Utc::now());
    assert_eq!(env.attempts("evt_poison").await, 1);
    assert_eq!(env.effects("evt_poison").await, 0);
    assert_eq!(
        properties.message_id().as_ref().map(|s| s.as_str()),
        Some("evt_poison")
    );
    assert_eq!(
        properties.content_type().as_ref().map(|s| s.as_str()),
        Some("application/json")
    );
    assert_eq!(
        properties.correlation_id().as_ref().map(|s| s.as_str()),
        Some("corr-1")
    );
    // The raw JSON uses the contract's field names.
    let raw = serde_json::to_value(record).unwrap();
    for field in [
        "attempts",
        "firstFailedAt",
        "lastFailedAt",
        "lastError",
        "errorKind",
        "consumer",
        "handler",
        "traceId",
    ] {
        assert!(
            raw["failureMetadata"].get(field).is_some(),
            "failureMetadata.{field}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_retries_are_dead_lettered_with_the_attempt_count_and_original_headers() {
    let env = TestEnv::new().await;
    let worker = start(&env).await;
    let mut headers = FieldTable::default();
    headers.insert(ShortString::from("tenant"), text("acme"));
    headers.insert(ShortString::from("priority-class"), AMQPValue::LongInt(5));
    let properties = BasicProperties::default()
        .with_message_id(ShortString::from("evt_tired"))
        .with_headers(headers);
    env.publish("Scripted", br#"{"failTimes": 99}"#, properties)
        .await;

    let records = env.wait_dead_letters("scripted", 1).await;
    worker.shutdown().await.unwrap();
    let record = &records[0].1;
    let meta = &record.failure_metadata;
    assert_eq!(meta.attempts, 3, "retry = 3 means three attempts in total");
    assert_eq!(meta.error_kind, ErrorKind::Retryable);
    assert_eq!(meta.last_error, "ScriptedFailure: attempt 3 fails");
    assert!(meta.first_failed_at < meta.last_failed_at);
    assert_eq!(env.attempts("evt_tired").await, 3);
    // The producer's routing and headers survive the trips through the delay queues, without the
    // worker's bookkeeping or the broker's x-death.
    assert_eq!(record.original_message.routing_key, "Scripted");
    assert_eq!(record.original_message.exchange, env.broker.exchange);
    let headers = &record.original_message.properties.headers;
    assert_eq!(
        headers.keys().collect::<Vec<_>>(),
        vec!["priority-class", "tenant"]
    );
    assert_eq!(headers["priority-class"], HeaderValue::I32(5));
    // A message without traceparent gets one trace for all its attempts, named in the record.
    let traces: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT trace_id FROM attempts WHERE event_id = 'evt_tired'")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(
        traces,
        vec![meta.trace_id.clone()],
        "every attempt ran under the record's trace id"
    );
    assert_eq!(meta.trace_id.len(), 32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_envelopes_are_dead_lettered_with_a_clear_reason() {
    let env = TestEnv::new().await;
    let worker = start(&env).await;
    env.publish(
        "Scripted",
        b"this is not json",
        BasicProperties::default().with_message_id(ShortString::from("evt_text")),
    )
    .await;
    env.publish(
        "Scripted",
        br#"{"failTimes": "many"}"#,
        BasicProperties::default().with_message_id(ShortString::from("evt_shape")),
    )
    .await;
    env.publish("Scripted", br#"{}"#, BasicProperties::default())
        .await;
    env.publish(
        "Scripted",
        br#"{}"#,
        BasicProperties::default().with_message_id(ShortString::from("")),
    )
    .await;
    let mut records = env.wait_dead_letters("scripted", 4).await;
    env.publish_json("Scripted", "evt_fine", json!({})).await;
    eventually("the worker keeps consuming", || async {
        env.effects("evt_fine").await == 1
    })
    .await;
    worker.shutdown().await.unwrap();

    records.sort_by_key(|(_, r)| {
        (
            r.original_message.id.clone(),
            r.failure_metadata.last_error.clone(),
        )
    });
    let errors: Vec<(Option<&str>, &str)> = records
        .iter()
        .map(|(_, r)| {
            (
                r.original_message.id.as_deref(),
                r.failure_metadata.last_error.as_str(),
            )
        })
        .collect();
    assert_eq!(errors[0], (None, "message has no message_id property: the event id is required (set message_id when publishing)"));
    assert_eq!(
        errors[1],
        (
            None,
            "message_id is empty: the event id is required (set message_id when publishing)"
        )
    );
    assert_eq!(errors[2].0, Some("evt_shape"));
    assert!(errors[2].1.starts_with("payload of Scripted does not match the handler's type at `failTimes`: invalid type: string \"many\""), "{}", errors[2].1);
    assert_eq!(errors[3].0, Some("evt_text"));
    assert!(
        errors[3]
            .1
            .starts_with("payload of Scripted is not valid JSON: expected"),
        "{}",
        errors[3].1
    );
    assert!(records
        .iter()
        .all(|(_, r)| r.failure_metadata.error_kind == ErrorKind::Poison
            && r.failure_metadata.attempts == 1));
    assert_eq!(
        records[3].1.original_message.payload,
        json!("this is not json")
    );
    assert_eq!(
        env.count(
            "SELECT count(*) FROM attempts WHERE handler = $1",
            "scripted"
        )
        .await,
        1,
        "only evt_fine reached the handler"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_original_body_and_headers_are_recoverable_byte_for_byte() {
    let env = TestEnv::new().await;
    let worker = start(&env).await;
    let body: Vec<u8> = vec![0xff, 0xfe, b'{', 0x00, 0xc3, 0x28, b'}'];
    let mut nested = FieldTable::default();
    nested.insert(ShortString::from("depth"), AMQPValue::ShortShortUInt(2));
    let mut headers = FieldTable::default();
    headers.insert(
        ShortString::from("binary"),
        AMQPValue::LongString(LongString::from(vec![0x80u8, 0x81])),
    );
    headers.insert(ShortString::from("count"), AMQPValue::LongLongInt(-7));
    headers.insert(ShortString::from("ratio"), AMQPValue::Double(0.5));
    headers.insert(ShortString::from("flag"), AMQPValue::Boolean(true));
    headers.insert(ShortString::from("nested"), AMQPValue::FieldTable(nested));
    let properties = BasicProperties::default()
        .with_message_id(ShortString::from("evt_binary"))
        .with_content_type(ShortString::from("application/octet-stream"))
        .with_timestamp(1_770_000_000)
        .with_app_id(ShortString::from("legacy-producer"))
        .with_headers(headers.clone());
    env.publish("Scripted", &body, properties).await;
    let records = env.wait_dead_letters("scripted", 1).await;
    worker.shutdown().await.unwrap();

    let original = &records[0].1.original_message;
    assert_eq!(
        original.original_body().unwrap(),
        body,
        "body byte for byte"
    );
    assert_eq!(
        original.properties.content_type.as_deref(),
        Some("application/octet-stream")
    );
    assert_eq!(original.properties.timestamp, Some(1_770_000_000));
    assert_eq!(
        original.properties.app_id.as_deref(),
        Some("legacy-producer")
    );
    assert_eq!(original.properties.delivery_mode, Some(2));
    let h = &original.properties.headers;
    assert_eq!(h["binary"], HeaderValue::LongString(vec![0x80, 0x81]));
    assert_eq!(h["count"], HeaderValue::I64(-7));
    assert_eq!(h["ratio"], HeaderValue::F64(0.5));
    assert_eq!(h["flag"], HeaderValue::Bool(true));
    let HeaderValue::Table(nested) = &h["nested"] else {
        panic!("nested table lost: {:?}", h["nested"])
    };
    assert_eq!(nested["depth"], HeaderValue::U8(2));
    assert_eq!(h.len(), 5);
}
