//! Observability: one trace across every attempt (checked with an in-memory span exporter), the
//! dead-letter record's traceId, Prometheus metrics scraped and parsed, health and readiness (and
//! `worker_ready` following it), the outbox backlog gauge.

use std::collections::HashMap;
use std::sync::OnceLock;

use lapin::types::{FieldTable, ShortString};
use lapin::BasicProperties;
use opentelemetry::trace::{SpanKind, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use serde_json::json;
use tracing_subscriber::layer::SubscriberExt;
use worker_tests::handlers::scripted;
use worker_tests::{close_connections_named, eventually, http_get, text, TestEnv};

/// The process-wide span exporter (tests in this file run in parallel; each filters by trace id).
fn spans_exporter() -> &'static (InMemorySpanExporter, SdkTracerProvider) {
    static EXPORTER: OnceLock<(InMemorySpanExporter, SdkTracerProvider)> = OnceLock::new();
    EXPORTER.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("tests")));
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other subscriber in this test binary");
        (exporter, provider)
    })
}

fn process_spans(trace_id: &str) -> Vec<SpanData> {
    let (exporter, _) = spans_exporter();
    let mut found: Vec<SpanData> = exporter
        .get_finished_spans()
        .expect("spans")
        .into_iter()
        .filter(|s| {
            s.span_context.trace_id().to_string() == trace_id && s.name.starts_with("process ")
        })
        .collect();
    found.sort_by_key(|s| s.start_time);
    found
}

fn attributes(span: &SpanData) -> HashMap<String, String> {
    span.attributes
        .iter()
        .map(|kv| (kv.key.to_string(), kv.value.to_string()))
        .collect()
}

async fn start(env: &TestEnv) -> worker_rabbitmq::RunningWorker {
    spans_exporter();
    worker_rabbitmq::Worker::builder()
        .handler(scripted)
        .migrations(TestEnv::migrator())
        .settings(env.settings())
        .start()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attempt_is_a_consumer_span_in_the_producers_trace() {
    let env = TestEnv::new().await;
    let worker = start(&env).await;
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let mut headers = FieldTable::default();
    headers.insert(
        ShortString::from("traceparent"),
        text(&format!("00-{trace_id}-b7ad6b7169203331-01")),
    );
    let properties = BasicProperties::default()
        .with_message_id(ShortString::from("evt_traced"))
        .with_headers(headers);
    env.publish("Scripted", br#"{"failTimes": 2}"#, properties)
        .await;
    eventually("evt_traced succeeds", || async {
        env.effects("evt_traced").await == 1
    })
    .await;
    eventually("three process spans exported", || async {
        process_spans(trace_id).len() == 3
    })
    .await;
    worker.shutdown().await.unwrap();

    let spans = process_spans(trace_id);
    let queue = env.queue("scripted");
    for (i, span) in spans.iter().enumerate() {
        let attrs = attributes(span);
        assert_eq!(span.span_kind, SpanKind::Consumer);
        assert_eq!(span.name, "process scripted");
        assert_eq!(attrs["messaging.system"], "rabbitmq");
        assert_eq!(attrs["messaging.operation.name"], "process");
        assert_eq!(attrs["messaging.operation.type"], "process");
        assert_eq!(attrs["messaging.destination.name"], env.broker.exchange);
        assert_eq!(
            attrs["messaging.rabbitmq.destination.routing_key"],
            "Scripted"
        );
        assert_eq!(attrs["messaging.message.id"], "evt_traced");
        assert_eq!(attrs["messaging.consumer.group.name"], "scripted");
        assert_eq!(attrs["worker.attempt"], (i + 1).to_string());
        let outcome = if i < 2 { "retry" } else { "ok" };
        assert_eq!(attrs["worker.outcome"], outcome, "attempt {}", i + 1);
        assert!(!queue.is_empty());
    }
    assert_eq!(
        spans[0].parent_span_id.to_string(),
        "b7ad6b7169203331",
        "the first attempt is a child of the producer's span"
    );
    // Attempt k+1 is a child of the producer span that published attempt k's retry copy, which is
    // a child of attempt k: one connected trace.
    let (exporter, _) = spans_exporter();
    let publishes: Vec<SpanData> = exporter
        .get_finished_spans()
        .unwrap()
        .into_iter()
        .filter(|s| {
            s.span_context.trace_id().to_string() == trace_id && s.name.starts_with("publish ")
        })
        .collect();
    assert_eq!(publishes.len(), 2, "one publish span per retry copy");
    for k in 0..2 {
        let publish = publishes
            .iter()
            .find(|p| p.parent_span_id == spans[k].span_context.span_id())
            .expect("a publish span under the attempt");
        assert_eq!(publish.span_kind, SpanKind::Producer);
        assert_eq!(publish.name, "publish scripted.retry");
        assert_eq!(
            attributes(publish)["messaging.rabbitmq.destination.routing_key"],
            format!("{queue}.retry.{}", k + 1)
        );
        assert_eq!(
            spans[k + 1].parent_span_id,
            publish.span_context.span_id(),
            "attempt {} continues from attempt {}",
            k + 2,
            k + 1
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_records_the_trace_its_spans_ran_in() {
    let env = TestEnv::new().await;
    let worker = start(&env).await;
    env.publish_json("Scripted", "evt_untraced", json!({ "failTimes": 99 }))
        .await;
    let records = env.wait_dead_letters("scripted", 1).await;
    let trace_id = records[0].1.failure_metadata.trace_id.clone();
    eventually("three process spans in the record's trace", || async {
        process_spans(&trace_id).len() == 3
    })
    .await;
    worker.shutdown().await.unwrap();
    let spans = process_spans(&trace_id);
    assert_eq!(attributes(&spans[2])["worker.outcome"], "dead_letter");
    assert_eq!(
        spans[0].parent_span_id,
        opentelemetry::trace::SpanId::INVALID,
        "a message without traceparent starts a trace"
    );
    let (properties, _) = &records[0];
    let dlq_traceparent = match properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("traceparent").cloned())
    {
        Some(lapin::types::AMQPValue::LongString(value)) => {
            String::from_utf8_lossy(value.as_bytes()).into_owned()
        }
        other => panic!("no traceparent on the dead-letter message: {other:?}"),
    };
    assert!(
        dlq_traceparent.contains(&trace_id),
        "the dead-letter message carries the trace: {dlq_traceparent}"
    );
}

/// Parses `name{labels} value` lines into a map.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            l.rsplit_once(' ')
                .and_then(|(k, v)| v.parse().ok().map(|v| (k.to_owned(), v)))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_outcomes_and_report_queue_depths() {
    let env = TestEnv::new().await;
    let worker = start(&env).await;
    let addr = worker.metrics_addr().expect("endpoint on");
    env.publish_json("Scripted", "evt_ok", json!({})).await;
    env.publish_json("Scripted", "evt_ok", json!({})).await;
    env.publish_json("Scripted", "evt_retry_once", json!({ "failTimes": 1 }))
        .await;
    env.publish_json("Scripted", "evt_poison", json!({ "poison": true }))
        .await;
    let sent_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 30;
    let stamped = BasicProperties::default()
        .with_message_id(ShortString::from("evt_stamped"))
        .with_timestamp(sent_at);
    env.publish("Scripted", b"{}", stamped).await;
    let m = |name: &str| {
        format!("worker_messages_total{{handler=\"scripted\",outcome=\"{name}\",error_kind=\"\"}}")
    };
    let poison =
        r#"worker_messages_total{handler="scripted",outcome="dead_letter",error_kind="poison"}"#;
    let dlq_depth = r#"worker_queue_messages{handler="scripted",queue="dlq"}"#;
    eventually("the counters and the DLQ depth move", || async {
        let (status, body) = http_get(addr, "/metrics").await;
        let s = samples(&body);
        let get = |k: &str| s.get(k).copied().unwrap_or(0.0);
        status == 200
            && get(&m("ok")) == 3.0
            && get(&m("duplicate")) == 1.0
            && get(&m("retry")) == 1.0
            && get(poison) == 1.0
            && get(dlq_depth) == 1.0
    })
    .await;
    let (_, body) = http_get(addr, "/metrics").await;
    let s = samples(&body);
    assert_eq!(
        s[r#"worker_queue_messages{handler="scripted",queue="work"}"#],
        0.0
    );
    assert_eq!(s[r#"worker_in_flight_messages{handler="scripted"}"#], 0.0);
    assert_eq!(
        s[r#"worker_handler_duration_seconds_count{handler="scripted"}"#],
        6.0
    );
    assert_eq!(
        s[r#"worker_message_age_seconds_count{handler="scripted"}"#], 1.0,
        "one message had a timestamp"
    );
    assert!(
        s[r#"worker_message_age_seconds_sum{handler="scripted"}"#] >= 30.0,
        "it was sent 30 s ago"
    );
    assert_eq!(http_get(addr, "/healthz").await.0, 200);
    worker.shutdown().await.unwrap();
}

/// `worker_ready` as scraped from `/metrics` (`-1` when it is missing).
async fn ready_gauge(addr: std::net::SocketAddr) -> f64 {
    let (_, body) = http_get(addr, "/metrics").await;
    samples(&body).get("worker_ready").copied().unwrap_or(-1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_broker_connection() {
    let mut env = TestEnv::new().await;
    env.config.consumer = format!("worker-tests-{}", env.id);
    let worker = start(&env).await;
    let addr = worker.metrics_addr().expect("endpoint on");
    eventually("ready once consuming", || async {
        http_get(addr, "/readyz").await.0 == 200
    })
    .await;
    assert_eq!(ready_gauge(addr).await, 1.0, "worker_ready follows /readyz");
    assert_eq!(
        close_connections_named(&env.config.consumer),
        1,
        "the worker's connection was found and closed"
    );
    eventually(
        "not ready (and worker_ready 0) after the connection is lost",
        || async {
            let (status, body) = http_get(addr, "/readyz").await;
            // The gauge is evaluated at the scrape with /readyz's check (the reconnect waits at
            // least 500 ms, so both are seen in the not-ready window).
            status == 503
                && body.contains("not connected to RabbitMQ")
                && ready_gauge(addr).await == 0.0
        },
    )
    .await;
    assert_eq!(http_get(addr, "/healthz").await.0, 200, "still alive");
    eventually("ready again after reconnecting", || async {
        http_get(addr, "/readyz").await.0 == 200
    })
    .await;
    eventually("worker_ready 1 again", || async {
        ready_gauge(addr).await == 1.0
    })
    .await;
    env.publish_json("Scripted", "evt_after_reconnect", json!({}))
        .await;
    eventually("consuming again", || async {
        env.effects("evt_after_reconnect").await == 1
    })
    .await;
    worker.shutdown().await.unwrap();
}

/// `worker_outbox_pending_events` counts the rows the relay has not published: three events no
/// queue is bound for stay in the outbox (the broker returns them); once a queue is bound the
/// relay publishes them and the gauge goes back to 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_backlog_gauge_counts_unpublished_rows() {
    let env = TestEnv::new().await;
    spans_exporter();
    let worker = worker_rabbitmq::Worker::builder()
        .handler(scripted)
        .migrations(TestEnv::migrator())
        .settings(env.settings())
        .outbox_settings(worker_core::OutboxSettings {
            poll_interval: std::time::Duration::from_millis(200),
            retry_base: std::time::Duration::from_millis(50),
            retry_cap: std::time::Duration::from_millis(200),
            ..worker_core::OutboxSettings::default()
        })
        .start()
        .await
        .unwrap();
    let addr = worker.metrics_addr().expect("endpoint on");
    let pending = || async {
        let (_, body) = http_get(addr, "/metrics").await;
        samples(&body)
            .get("worker_outbox_pending_events")
            .copied()
            .unwrap_or(-1.0)
    };
    let mut tx = env.pool.begin().await.expect("begin");
    for n in 0..3 {
        worker_core::Outbox::enqueue(
            &mut tx,
            worker_core::OutboxEvent::new("Unbound", "agg_1", json!({ "n": n }))
                .event_id(format!("evt_unbound_{n}")),
        )
        .await
        .expect("enqueue");
    }
    tx.commit().await.expect("commit");
    eventually("worker_outbox_pending_events is 3", || async {
        pending().await == 3.0
    })
    .await;

    let probe = format!("{}probe", env.broker.queue_prefix);
    env.channel
        .queue_declare(
            probe.as_str().into(),
            lapin::options::QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare probe queue");
    env.channel
        .queue_bind(
            probe.as_str().into(),
            env.broker.exchange.as_str().into(),
            "Unbound".into(),
            lapin::options::QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind probe queue");
    eventually("the relay publishes them", || async {
        env.depth(&probe).await == 3
    })
    .await;
    eventually("worker_outbox_pending_events is 0", || async {
        pending().await == 0.0
    })
    .await;
    worker.shutdown().await.unwrap();
}
