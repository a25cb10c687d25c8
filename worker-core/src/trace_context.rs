//! W3C trace context: which trace a delivery belongs to.
//!
//! Every attempt of one event is in one trace: the producer's `traceparent` when it sent one,
//! else a trace id the worker starts on the first attempt and carries in
//! [`TRACE_ID_HEADER`](crate::retry::attempts::TRACE_ID_HEADER) on retry copies.

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TraceContext {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// The parent span id (16 hex digits): the producer's, or the previous attempt's.
    pub parent_span_id: Option<String>,
    /// The producer's `tracestate`, passed on.
    pub tracestate: Option<String>,
    /// Where the trace id came from.
    pub origin: TraceOrigin,
}

impl TraceContext {
    /// The trace of a delivery, from its headers. A malformed `traceparent` (or one of an
    /// unexpected header type) is ignored, as the W3C spec asks, and a new trace is started.
    pub(crate) fn from_headers(headers: &Headers) -> Self {
        let text = |name: &str| headers.get(name).and_then(HeaderValue::as_str);
        let tracestate = text(TRACESTATE_HEADER).map(str::to_owned);
        if let Some((trace_id, span_id)) =
            text(WORKER_TRACEPARENT_HEADER).and_then(parse_traceparent)
        {
            return Self {
                trace_id,
                parent_span_id: Some(span_id),
                tracestate,
                origin: TraceOrigin::EarlierAttempt,
            };
        }
        if let Some((trace_id, span_id)) = text(TRACEPARENT_HEADER).and_then(parse_traceparent) {
            return Self {
                trace_id,
                parent_span_id: Some(span_id),
                tracestate,
                origin: TraceOrigin::Producer,
            };
        }
        if let Some(id) = text(TRACE_ID_HEADER).filter(|id| is_trace_id(id)) {
            return Self {
                trace_id: id.to_owned(),
                parent_span_id: None,
                tracestate,
                origin: TraceOrigin::EarlierAttempt,
            };
        }
        Self {
            trace_id: new_trace_id(),
            parent_span_id: None,
            tracestate,
            origin: TraceOrigin::Started,
        }
    }
}

/// Parses `00-<trace id>-<span id>-<flags>` into the trace id and span id.
pub fn parse_traceparent(value: &str) -> Option<(String, String)> {
    let mut parts = value.trim().split('-');
    let version = parts.next()?;
    let trace_id = parts.next()?;
    let span_id = parts.next()?;
    let flags = parts.next()?;
    let valid = version.len() == 2
        && is_hex(version)
        && version != "ff"
        && (version != "00" || parts.next().is_none())
        && is_trace_id(trace_id)
        && span_id.len() == 16
        && is_hex(span_id)
        && span_id != "0000000000000000"
        && flags.len() == 2
        && is_hex(flags);
    valid.then(|| (trace_id.to_owned(), span_id.to_owned()))
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
}
