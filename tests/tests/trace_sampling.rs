//! Trace context by the book, seen from a real OTLP/HTTP receiver: a worker process exports the
//! consumer spans of a producer's sampled trace and none of an unsampled one (parent-based
//! sampling), `OTEL_TRACES_SAMPLER` is honoured, and the dead-letter record carries the trace id
//! either way.

use std::collections::BTreeMap;
use std::process::Stdio;

use lapin::types::{FieldTable, ShortString};
use lapin::BasicProperties;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use worker_tests::otlp::OtlpReceiver;
use worker_tests::{eventually, stop_gracefully, text, TestEnv};

const SAMPLED: &str = "0af7651916cd43dd8448eb211c80319c";
const UNSAMPLED: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// Runs the scripted worker as a process exporting to `receiver` (with the extra `env`), publishes
/// one poison event per `(event id, traceparent)` and returns the dead-letter records' trace ids
/// by event id, after the worker stopped (and so flushed its spans).
async fn dead_letter_traces(
    env: &TestEnv,
    receiver: &OtlpReceiver,
    extra: &[(&str, &str)],
    events: &[(&str, Option<String>)],
) -> BTreeMap<String, String> {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_cli_worker"))
        .envs(env.worker_env())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint())
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .envs(extra.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn cli_worker");
    let queue = env.queue("scripted");
    eventually("the worker process consumes", || async {
        env.consumers(&queue).await >= 1
    })
    .await;
    for (event_id, traceparent) in events {
        let mut headers = FieldTable::default();
        if let Some(traceparent) = traceparent {
            headers.insert(ShortString::from("traceparent"), text(traceparent));
        }
        let properties = BasicProperties::default()
            .with_message_id(ShortString::from(*event_id))
            .with_headers(headers);
        env.publish("Scripted", br#"{"poison": true}"#, properties)
            .await;
    }
    let records = env.wait_dead_letters("scripted", events.len()).await;
    stop_gracefully(&mut child).await;
    records
        .into_iter()
        .map(|(_, record)| {
            (
                record
                    .original_message
                    .properties
                    .message_id
                    .clone()
                    .unwrap_or_default(),
                record.failure_metadata.trace_id.clone(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_producers_sampling_decision_is_honoured() {
    let env = TestEnv::new().await;
    let receiver = OtlpReceiver::start().await;
    let traces = dead_letter_traces(
        &env,
        &receiver,
        &[],
        &[
            (
                "evt_sampled",
                Some(format!("00-{SAMPLED}-b7ad6b7169203331-01")),
            ),
            (
                "evt_unsampled",
                Some(format!("00-{UNSAMPLED}-00f067aa0ba902b7-00")),
            ),
            ("evt_untraced", None),
        ],
    )
    .await;

    assert_eq!(traces["evt_sampled"], SAMPLED);
    assert_eq!(
        traces["evt_unsampled"], UNSAMPLED,
        "an unsampled trace still reaches the dead-letter record"
    );
    let sampled = receiver.spans_of(SAMPLED);
    assert!(
        sampled.iter().any(|s| s.kind == SpanKind::Consumer),
        "the sampled trace's consumer span is exported: {sampled:?}"
    );
    assert!(
        sampled.iter().any(|s| s.kind == SpanKind::Producer),
        "and the dead letter's publish span: {sampled:?}"
    );
    assert_eq!(
        receiver.spans_of(UNSAMPLED),
        vec![],
        "an unsampled parent exports no spans"
    );
    let started = &traces["evt_untraced"];
    assert!(
        receiver
            .spans_of(started)
            .iter()
            .any(|s| s.kind == SpanKind::Consumer),
        "a trace the worker starts is sampled (parent-based, always on at the root), and its id \
         is the dead-letter record's"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otel_traces_sampler_is_respected() {
    let env = TestEnv::new().await;
    let receiver = OtlpReceiver::start().await;
    let traces = dead_letter_traces(
        &env,
        &receiver,
        &[("OTEL_TRACES_SAMPLER", "always_off")],
        &[(
            "evt_sampled",
            Some(format!("00-{SAMPLED}-b7ad6b7169203331-01")),
        )],
    )
    .await;

    assert_eq!(traces["evt_sampled"], SAMPLED);
    assert_eq!(
        receiver.total(),
        0,
        "OTEL_TRACES_SAMPLER=always_off exports nothing, even for a sampled parent"
    );
}
