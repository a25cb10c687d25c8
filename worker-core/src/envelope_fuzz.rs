//! Property tests ("fuzzing") of everything that reads untrusted input from the wire: envelope
//! and header decoding, attempt counts, trace context, payload decoding and the dead-letter
//! record. No input may panic, a count is always clamped, and a record always gives back the
//! original bytes. Failing cases are kept by proptest in `proptest-regressions/` (the corpus).

use crate::dead_letter::record::OriginalMessage;
use crate::message::headers::{HeaderValue, Headers};
use crate::message::inbound::{InboundMessage, Properties};
use crate::pipeline::decode;
use crate::pipeline::envelope::Envelope;
use crate::retry::attempts::{self, RetryState, ATTEMPTS_HEADER, FIRST_FAILED_AT_HEADER};
use crate::trace_context::{parse_traceparent, TraceContext};
use proptest::prelude::*;

fn header_value() -> impl Strategy<Value = HeaderValue> {
    let leaf = prop_oneof![
        any::<bool>().prop_map(HeaderValue::Bool),
        any::<i8>().prop_map(HeaderValue::I8),
        any::<u8>().prop_map(HeaderValue::U8),
        any::<i16>().prop_map(HeaderValue::I16),
        any::<u16>().prop_map(HeaderValue::U16),
        any::<i32>().prop_map(HeaderValue::I32),
        any::<u32>().prop_map(HeaderValue::U32),
        any::<i64>().prop_map(HeaderValue::I64),
        any::<f32>().prop_map(HeaderValue::F32),
        any::<f64>().prop_map(HeaderValue::F64),
        (any::<u8>(), any::<u32>())
            .prop_map(|(scale, value)| HeaderValue::Decimal { scale, value }),
        ".{0,40}".prop_map(HeaderValue::ShortString),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(HeaderValue::LongString),
        any::<u64>().prop_map(HeaderValue::Timestamp),
        proptest::collection::vec(any::<u8>(), 0..32).prop_map(HeaderValue::ByteArray),
        Just(HeaderValue::Void),
        // Values that look like ours or like trace context, to hit those parsers.
        "-?[0-9]{1,25}".prop_map(HeaderValue::string),
        "00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]".prop_map(HeaderValue::string),
        "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}Z".prop_map(HeaderValue::string),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(HeaderValue::Array),
            proptest::collection::btree_map(".{0,12}", inner, 0..6).prop_map(HeaderValue::Table),
        ]
    })
}

fn header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(ATTEMPTS_HEADER.to_owned()),
        Just(FIRST_FAILED_AT_HEADER.to_owned()),
        Just("traceparent".to_owned()),
        Just("tracestate".to_owned()),
        Just("x-worker-traceparent".to_owned()),
        Just("x-worker-trace-id".to_owned()),
        Just("x-worker-exchange".to_owned()),
        Just("x-worker-routing-key".to_owned()),
        Just("x-broker-history".to_owned()),
        ".{0,20}",
    ]
}

fn headers() -> impl Strategy<Value = Headers> {
    proptest::collection::btree_map(header_name(), header_value(), 0..12)
}

fn message() -> impl Strategy<Value = InboundMessage> {
    (
        headers(),
        proptest::option::of(".{0,300}"),
        proptest::option::of(".{0,20}"),
        proptest::collection::vec(any::<u8>(), 0..256),
        ".{0,20}",
        ".{0,20}",
        any::<bool>(),
    )
        .prop_map(
            |(headers, message_id, kind, body, exchange, routing_key, redelivered)| {
                InboundMessage {
                    exchange,
                    routing_key,
                    redelivered,
                    body,
                    properties: Properties {
                        message_id,
                        kind,
                        headers,
                        ..Properties::default()
                    },
                }
            },
        )
}

#[derive(Debug, serde::Deserialize)]
#[allow(dead_code)]
struct OrderPlaced {
    order_id: String,
    amount: i64,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn envelopes_never_panic_and_counts_are_clamped(message in message(), max_attempts in 1u32..30) {
        let envelope = Envelope::open(&message, max_attempts);
        prop_assert!(envelope.retry.failures < max_attempts);
        prop_assert!(envelope.retry.attempt() >= 1 && envelope.retry.attempt() <= max_attempts);
        prop_assert_eq!(envelope.trace.trace_id.len(), 32);
        if let Ok(id) = &envelope.event_id {
            prop_assert!(!id.trim().is_empty() && id.len() <= 255);
        }
        prop_assert!(envelope.original_headers.keys().all(|k| !k.starts_with("x-worker-")));
    }

    #[test]
    fn retry_state_reads_any_header_type(value in header_value(), max_attempts in 1u32..30) {
        let mut headers = Headers::new();
        headers.insert(ATTEMPTS_HEADER.into(), value);
        let state = RetryState::read(&headers, max_attempts);
        prop_assert!(state.failures < max_attempts);
        let _ = attempts::original_headers(&headers);
    }

    #[test]
    fn trace_context_never_panics(raw in ".{0,80}", value in header_value()) {
        let _ = parse_traceparent(&raw);
        let mut headers = Headers::new();
        headers.insert("traceparent".into(), value);
        let trace = TraceContext::from_headers(&headers);
        prop_assert_eq!(trace.trace_id.len(), 32);
    }

    #[test]
    fn payload_decoding_never_panics(body in proptest::collection::vec(any::<u8>(), 0..256), text in ".{0,200}") {
        let _ = decode::payload::<OrderPlaced>(&body, "OrderPlaced");
        let _ = decode::payload::<OrderPlaced>(text.as_bytes(), "OrderPlaced");
        let _ = decode::payload::<serde_json::Value>(text.as_bytes(), "OrderPlaced");
    }

    #[test]
    fn records_give_back_the_original_bytes_and_headers(message in message()) {
        let original = OriginalMessage::new(
            message.properties.message_id.clone(),
            "T".into(),
            message.routing_key.clone(),
            message.exchange.clone(),
            &message.body,
            message.properties.clone(),
        );
        let json = serde_json::to_vec(&original).expect("a record serializes");
        let back: OriginalMessage = serde_json::from_slice(&json).expect("a record deserializes");
        prop_assert_eq!(back.original_body().expect("valid encoding"), message.body.clone());
        // Floats are compared by bits so NaN round-trips count.
        prop_assert_eq!(format!("{:?}", back.properties.headers), format!("{:?}", message.properties.headers));
    }
}

/// Hand-picked nasty inputs that have to keep working (the seed corpus).
#[test]
fn seed_corpus() {
    let cases: Vec<(&str, HeaderValue)> = vec![
        (ATTEMPTS_HEADER, HeaderValue::I64(i64::MIN)),
        (ATTEMPTS_HEADER, HeaderValue::I64(i64::MAX)),
        (
            ATTEMPTS_HEADER,
            HeaderValue::string("99999999999999999999999999999999999999999"),
        ),
        (ATTEMPTS_HEADER, HeaderValue::string("-1")),
        (ATTEMPTS_HEADER, HeaderValue::F64(f64::NAN)),
        (
            ATTEMPTS_HEADER,
            HeaderValue::Array(vec![HeaderValue::I32(3)]),
        ),
        (FIRST_FAILED_AT_HEADER, HeaderValue::string("not a time")),
        ("traceparent", HeaderValue::LongString(vec![0xff, 0xfe])),
        (
            "traceparent",
            HeaderValue::string("00-00000000000000000000000000000000-0000000000000000-00"),
        ),
        ("traceparent", HeaderValue::Table(Headers::new())),
        ("x-broker-history", HeaderValue::string("not an array")),
    ];
    for (name, value) in cases {
        let mut message = InboundMessage::default();
        message.properties.headers.insert(name.into(), value);
        message
            .properties
            .headers
            .insert(ATTEMPTS_HEADER.into(), HeaderValue::I32(2));
        let envelope = Envelope::open(&message, 5);
        assert!(envelope.retry.failures < 5);
    }
}
