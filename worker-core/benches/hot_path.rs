//! Micro-benchmarks of the in-process hot path of one delivery: opening the envelope, decoding
//! the payload, the whole pipeline for a no-op handler without dedup (dispatch included), and
//! building and serializing a dead-letter record.
//!
//! `cargo bench -p worker-core --bench hot_path`. Nothing here touches the network: the pipeline
//! benchmark's handler has no dedup and its runtime no pool.

use std::hint::black_box;
use std::sync::Arc;

use chrono::Utc;
use criterion::{criterion_main, Criterion, Throughput};
use worker_core::transport::dead_letter::{FailureMetadata, OriginalMessage};
use worker_core::transport::dedup::{DedupStore, Identifier};
use worker_core::transport::message::HeaderValue;
use worker_core::transport::observer::NoopObserver;
use worker_core::transport::pipeline::{self, Disposition, Envelope, Runtime};
use worker_core::transport::CoreSpans;
use worker_core::{handler, DeadLetterRecord, ErrorKind, Handler, HandlerError, InboundMessage};

/// The benchmark's event, shaped like the `worker-bench` payload (~200 bytes of JSON).
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(
    dead_code,
    reason = "the fields are what the decoder fills; nothing reads them"
)]
struct OrderPlaced {
    order_id: String,
    user_id: String,
    amount: i64,
    currency: String,
    items: Vec<Item>,
    note: String,
}

#[derive(Debug, serde::Deserialize)]
#[allow(
    dead_code,
    reason = "the fields are what the decoder fills; nothing reads them"
)]
struct Item {
    sku: String,
    qty: u32,
}

const BODY: &[u8] = br#"{"orderId":"ord_00012345","userId":"usr_02345","amount":2445,"currency":"EUR","items":[{"sku":"sku_0378","qty":1},{"sku":"sku_0453","qty":1}],"note":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#;

#[handler(event = "OrderPlaced", name = "noop")]
async fn noop(event: OrderPlaced) -> Result<(), HandlerError> {
    black_box(&event);
    Ok(())
}

fn message() -> InboundMessage {
    let mut message = InboundMessage {
        exchange: "events".into(),
        routing_key: "OrderPlaced".into(),
        body: BODY.to_vec(),
        ..Default::default()
    };
    let properties = &mut message.properties;
    properties.message_id = Some("evt-12345".into());
    properties.content_type = Some("application/json".into());
    properties.delivery_mode = Some(2);
    properties.timestamp = Some(1_796_075_588);
    properties.headers.insert(
        "traceparent".into(),
        HeaderValue::string("00-50c793beed73ebc794bfe143e7097cc1-00a5c099c90f7d0a-01"),
    );
    properties.headers.insert(
        "x-bench-published-us".into(),
        HeaderValue::I64(1_796_075_588_000_000),
    );
    message
}

fn record(message: &InboundMessage) -> DeadLetterRecord {
    let now = Utc::now();
    DeadLetterRecord {
        original_message: OriginalMessage::new(
            message.properties.message_id.clone(),
            "OrderPlaced".into(),
            message.routing_key.clone(),
            message.exchange.clone(),
            &message.body,
            message.properties.clone(),
        ),
        failure_metadata: FailureMetadata {
            attempts: 12,
            first_failed_at: now,
            last_failed_at: now,
            last_error: "PaymentError: IssuerUnavailable: card issuer of usr_77 answered 503"
                .into(),
            error_kind: ErrorKind::Retryable,
            consumer: "order-worker-0.1.0".into(),
            handler: "charge-on-order-placed".into(),
            trace_id: "50c793beed73ebc794bfe143e7097cc1".into(),
        },
    }
}

fn decoding(c: &mut Criterion) {
    let message = message();
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(1));
    group.bench_function("envelope_open", |b| {
        b.iter(|| Envelope::open(black_box(&message), 5))
    });
    group.bench_function("payload", |b| {
        b.iter(|| {
            pipeline::payload::<OrderPlaced>(black_box(&message.body), "OrderPlaced")
                .expect("decodes")
        })
    });
    group.finish();
}

fn processing(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let worker = Runtime {
        pool: None,
        dedup: DedupStore::new(Identifier::new("public").expect("identifier")),
        consumer: "bench".into(),
        observer: Arc::new(NoopObserver),
        max_payload_bytes: usize::MAX,
        spans: Arc::new(CoreSpans),
        states: worker_core::transport::pipeline::States::new(),
        clock: worker_core::transport::pipeline::Clock::system(),
        jitter: worker_core::transport::pipeline::Jitter::random(),
        max_retry_after: worker_core::transport::config::DEFAULT_MAX_RETRY_AFTER,
        error_policies: Default::default(),
        upcasters: Default::default(),
    };
    let spec = noop.spec();
    let message = message();
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(1));
    group.bench_function("process_noop_without_dedup", |b| {
        b.iter(|| {
            let disposition = runtime.block_on(pipeline::process(
                &noop,
                &spec,
                &worker,
                black_box(&message),
            ));
            assert!(matches!(disposition, Disposition::Processed));
        })
    });
    group.finish();
}

fn dead_letters(c: &mut Criterion) {
    let message = message();
    let mut group = c.benchmark_group("dead_letter");
    group.throughput(Throughput::Elements(1));
    group.bench_function("build_record", |b| b.iter(|| record(black_box(&message))));
    group.bench_function("build_and_serialize_record", |b| {
        b.iter(|| serde_json::to_vec(&record(black_box(&message))).expect("serializes"))
    });
    group.finish();
}

mod groups {
    #![allow(missing_docs, reason = "generated by criterion_group!")]
    use super::{dead_letters, decoding, processing};
    criterion::criterion_group!(benches, decoding, processing, dead_letters);
}

criterion_main!(groups::benches);
