//! W3C trace context: which trace a delivery belongs to.
//!
//! Every attempt of one event is in one trace: the producer's `traceparent` when it sent one,
//! else a trace id the worker starts on the first attempt and carries in
//! [`TRACE_ID_HEADER`](crate::retry::attempts::TRACE_ID_HEADER) on retry copies.

use std::sync::OnceLock;

use opentelemetry::propagation::{
    Extractor, Injector, TextMapCompositePropagator, TextMapPropagator,
};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use rand::RngCore;

use crate::message::headers::{HeaderValue, Headers};
use crate::retry::attempts::{TRACE_ID_HEADER, WORKER_TRACEPARENT_HEADER};

/// Header name of the W3C trace parent.
pub const TRACEPARENT_HEADER: &str = "traceparent";
/// Header name of the W3C trace state.
pub(crate) const TRACESTATE_HEADER: &str = "tracestate";

/// Where a trace id came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TraceOrigin {
    /// The producer's `traceparent` header.
    Producer,
    /// Started by the worker on an earlier attempt of the same event.
    EarlierAttempt,
    /// Started now: the message carried no usable trace context.
    Started,
}

/// The trace a delivery belongs to.
#[derive(Debug, Clone)]
pub(crate) struct TraceContext {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// What the W3C TraceContext and Baggage propagators extracted: the remote parent span (the
    /// producer's, or the previous attempt's) with its sampled flag and `tracestate`, and the
    /// producer's baggage. Without a usable parent it holds the baggage only.
    pub parent: opentelemetry::Context,
    /// Where the trace id came from.
    pub origin: TraceOrigin,
}

impl TraceContext {
    /// The trace of a delivery, from its headers, read by the W3C propagators. A malformed
    /// `traceparent` (or one of an unexpected header type) is ignored, as the W3C spec asks, and
    /// a new trace is started.
    pub(crate) fn from_headers(headers: &Headers) -> Self {
        let worker = extract(headers, WORKER_TRACEPARENT_HEADER);
        if let Some(trace_id) = remote_trace_id(&worker) {
            return Self {
                trace_id,
                parent: worker,
                origin: TraceOrigin::EarlierAttempt,
            };
        }
        let producer = extract(headers, TRACEPARENT_HEADER);
        if let Some(trace_id) = remote_trace_id(&producer) {
            return Self {
                trace_id,
                parent: producer,
                origin: TraceOrigin::Producer,
            };
        }
        let text = |name: &str| headers.get(name).and_then(HeaderValue::as_str);
        if let Some(id) = text(TRACE_ID_HEADER).filter(|id| is_trace_id(id)) {
            // Only the trace id survived (a replay of a record whose message had no
            // `traceparent`): a parent span of that trace, sampled as the worker's own traces are.
            if let Ok(trace_id) = TraceId::from_hex(id) {
                let state = text(TRACESTATE_HEADER)
                    .and_then(|s| s.parse::<TraceState>().ok())
                    .unwrap_or_default();
                let remote =
                    SpanContext::new(trace_id, random_span_id(), TraceFlags::SAMPLED, true, state);
                return Self {
                    trace_id: id.to_owned(),
                    parent: producer.with_remote_span_context(remote),
                    origin: TraceOrigin::EarlierAttempt,
                };
            }
        }
        Self {
            trace_id: new_trace_id(),
            parent: producer,
            origin: TraceOrigin::Started,
        }
    }

    /// Whether the trace is sampled: the remote parent's flag; a trace the worker starts is.
    pub(crate) fn sampled(&self) -> bool {
        let span = self.parent.span();
        let parent = span.span_context();
        !parent.is_valid() || parent.is_sampled()
    }
}

/// The W3C TraceContext and Baggage propagators, as one.
fn propagator() -> &'static TextMapCompositePropagator {
    static PROPAGATOR: OnceLock<TextMapCompositePropagator> = OnceLock::new();
    PROPAGATOR.get_or_init(|| {
        TextMapCompositePropagator::new(vec![
            Box::new(TraceContextPropagator::new()),
            Box::new(BaggagePropagator::new()),
        ])
    })
}

/// Message headers as a W3C carrier; `traceparent` is read from the header named `traceparent`
/// (the worker's own parent header on a retry copy, else the producer's).
struct HeaderCarrier<'a> {
    headers: &'a Headers,
    traceparent: &'a str,
}

impl Extractor for HeaderCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        let name = if key == TRACEPARENT_HEADER {
            self.traceparent
        } else {
            key
        };
        self.headers.get(name).and_then(HeaderValue::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.headers.keys().map(String::as_str).collect()
    }
}

fn extract(headers: &Headers, traceparent: &str) -> opentelemetry::Context {
    propagator().extract(&HeaderCarrier {
        headers,
        traceparent,
    })
}

fn remote_trace_id(context: &opentelemetry::Context) -> Option<String> {
    let span = context.span();
    let remote = span.span_context();
    remote.is_valid().then(|| remote.trace_id().to_string())
}

/// Writes the trace context of `context` (`traceparent`, `tracestate`) and its baggage with
/// `set`, as the W3C propagators do.
pub(crate) fn inject(context: &opentelemetry::Context, set: impl FnMut(&str, String)) {
    struct Setter<F>(F);
    impl<F: FnMut(&str, String)> Injector for Setter<F> {
        fn set(&mut self, key: &str, value: String) {
            (self.0)(key, value)
        }
    }
    propagator().inject_context(context, &mut Setter(set));
}

/// Parses `00-<trace id>-<span id>-<flags>` into the trace id and span id, with the W3C
/// TraceContext propagator (`None` for anything it does not accept).
pub fn parse_traceparent(value: &str) -> Option<(String, String)> {
    struct One<'a>(&'a str);
    impl Extractor for One<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            (key == TRACEPARENT_HEADER).then_some(self.0)
        }
        fn keys(&self) -> Vec<&str> {
            vec![TRACEPARENT_HEADER]
        }
    }
    let context = TraceContextPropagator::new().extract(&One(value));
    let span = context.span();
    let remote = span.span_context();
    remote
        .is_valid()
        .then(|| (remote.trace_id().to_string(), remote.span_id().to_string()))
}

/// A random, valid (non-zero) span id.
pub(crate) fn random_span_id() -> SpanId {
    let mut bytes = [0u8; 8];
    while bytes == [0; 8] {
        rand::thread_rng().fill_bytes(&mut bytes);
    }
    SpanId::from_bytes(bytes)
}

fn is_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn is_trace_id(s: &str) -> bool {
    s.len() == 32 && is_hex(s) && s != "00000000000000000000000000000000"
}

/// A fresh random trace id.
pub fn new_trace_id() -> String {
    let mut bytes = [0u8; 16];
    loop {
        rand::thread_rng().fill_bytes(&mut bytes);
        if bytes != [0; 16] {
            break;
        }
    }
    hex(&bytes)
}

/// `bytes` as lowercase hex digits, two per byte.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn hex_is_two_lowercase_digits_per_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
        let id = new_trace_id();
        assert_eq!(id.len(), 32);
        assert!(id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    }

    #[test]
    fn parses_valid_traceparent() {
        let (t, s) = parse_traceparent(TP).unwrap();
        assert_eq!(t, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(s, "00f067aa0ba902b7");
    }

    #[test]
    fn rejects_malformed_traceparent() {
        for bad in [
            "",
            "garbage",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn falls_back_to_the_worker_trace_then_a_new_one() {
        let mut h = Headers::new();
        h.insert(TRACEPARENT_HEADER.into(), HeaderValue::I32(5));
        let started = TraceContext::from_headers(&h);
        assert_eq!(started.origin, TraceOrigin::Started);
        assert!(is_trace_id(&started.trace_id));
        h.insert(
            TRACE_ID_HEADER.into(),
            HeaderValue::string(started.trace_id.clone()),
        );
        let again = TraceContext::from_headers(&h);
        assert_eq!(
            (again.trace_id, again.origin),
            (started.trace_id, TraceOrigin::EarlierAttempt)
        );
        h.insert(
            TRACEPARENT_HEADER.into(),
            HeaderValue::LongString(TP.as_bytes().to_vec()),
        );
        assert_eq!(TraceContext::from_headers(&h).origin, TraceOrigin::Producer);
    }

    fn with_header(headers: &mut Headers, name: &str, value: &str) {
        headers.insert(name.into(), HeaderValue::string(value.to_owned()));
    }

    #[test]
    fn keeps_the_parents_sampled_flag_tracestate_and_baggage() {
        let mut h = Headers::new();
        with_header(
            &mut h,
            TRACEPARENT_HEADER,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        );
        with_header(&mut h, TRACESTATE_HEADER, "vendor=abc,other=1");
        with_header(&mut h, "baggage", "tenant=acme");
        let trace = TraceContext::from_headers(&h);
        assert_eq!(trace.origin, TraceOrigin::Producer);
        assert!(!trace.sampled(), "the producer did not sample this trace");
        let span = trace.parent.span();
        let parent = span.span_context();
        assert_eq!(parent.span_id().to_string(), "00f067aa0ba902b7");
        assert_eq!(parent.trace_state().header(), "vendor=abc,other=1");
        use opentelemetry::baggage::BaggageExt;
        assert_eq!(
            trace.parent.baggage().get("tenant").map(|v| v.to_string()),
            Some("acme".to_owned())
        );

        with_header(
            &mut h,
            TRACEPARENT_HEADER,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
        assert!(TraceContext::from_headers(&h).sampled());
    }

    #[test]
    fn the_previous_attempt_wins_over_the_producer() {
        let mut h = Headers::new();
        with_header(&mut h, TRACEPARENT_HEADER, TP);
        with_header(
            &mut h,
            WORKER_TRACEPARENT_HEADER,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-1111111111111111-00",
        );
        let trace = TraceContext::from_headers(&h);
        assert_eq!(trace.origin, TraceOrigin::EarlierAttempt);
        assert_eq!(
            trace.parent.span().span_context().span_id().to_string(),
            "1111111111111111"
        );
        assert!(!trace.sampled());
    }

    #[test]
    fn injects_traceparent_tracestate_and_baggage() {
        let mut h = Headers::new();
        with_header(&mut h, TRACEPARENT_HEADER, TP);
        with_header(&mut h, TRACESTATE_HEADER, "vendor=abc");
        with_header(&mut h, "baggage", "tenant=acme");
        let trace = TraceContext::from_headers(&h);
        let mut out = std::collections::BTreeMap::new();
        inject(&trace.parent, |key, value| {
            out.insert(key.to_owned(), value);
        });
        assert_eq!(out["traceparent"], TP);
        assert_eq!(out["tracestate"], "vendor=abc");
        assert_eq!(out["baggage"], "tenant=acme");
    }
}
