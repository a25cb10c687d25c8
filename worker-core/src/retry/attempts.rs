//! The attempt count and first-failure time, carried in the message's own headers
//! (`docs/contracts.md` §3).
//!
//! Nothing about retries is kept in memory or read from the broker's own bookkeeping of
//! dead-lettered messages: a retry copy carries `x-worker-attempts` (failures so far) and
//! `x-worker-first-failed-at`. Whatever a producer puts there is clamped, never trusted to skip
//! work. Headers the broker adds on the way through its delay path are the transport's to remove
//! before the core sees the delivery.

use chrono::{DateTime, Utc};

use crate::message::headers::{HeaderValue, Headers};

/// Header: failed attempts so far (an integer).
pub const ATTEMPTS_HEADER: &str = "x-worker-attempts";
/// Header: when the first attempt failed (RFC 3339).
pub const FIRST_FAILED_AT_HEADER: &str = "x-worker-first-failed-at";
/// Header: the last error, for someone peeking at a delay queue.
pub const LAST_ERROR_HEADER: &str = "x-worker-last-error";
/// Header: the exchange the producer published to (retry copies travel via the default exchange).
pub const ORIGINAL_EXCHANGE_HEADER: &str = "x-worker-exchange";
/// Header: the routing key the producer published with.
pub const ORIGINAL_ROUTING_KEY_HEADER: &str = "x-worker-routing-key";
/// Header: the trace id of the event, for messages that arrived without `traceparent` (set by
/// replays; read as a fallback).
pub const TRACE_ID_HEADER: &str = "x-worker-trace-id";
/// Header: W3C `traceparent` of the attempt that published this retry copy, so the next attempt
/// joins the same trace (the producer's own `traceparent` header is left untouched).
pub const WORKER_TRACEPARENT_HEADER: &str = "x-worker-traceparent";
/// Header on a retry copy whose handler asked for a wait ([`crate::HandlerError::retry_after`]):
/// the copy is not due before this time (RFC 3339). A copy that arrives earlier (the broker's
/// delay queues hold a copy back for at most their longest level) is parked again without
/// running the handler and without counting an attempt.
pub const NOT_BEFORE_HEADER: &str = "x-worker-not-before";

/// Prefix of every header the worker adds.
pub const WORKER_HEADER_PREFIX: &str = "x-worker-";

/// Where a delivery stands in its retry schedule, read from its headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RetryState {
    /// Failed attempts before this delivery, clamped to `0..max_attempts`.
    pub failures: u32,
    /// When the first attempt failed, if one did.
    pub first_failed_at: Option<DateTime<Utc>>,
    /// When a wait the handler asked for ends ([`NOT_BEFORE_HEADER`]).
    pub not_before: Option<DateTime<Utc>>,
    /// The previous attempt's error ([`LAST_ERROR_HEADER`]).
    pub last_error: Option<String>,
}

impl RetryState {
    /// Reads the state from headers, clamping a malformed or forged count: a negative,
    /// non-numeric or missing count reads as 0, and a count at or above `max_attempts` reads as
    /// `max_attempts - 1`, so the delivery still gets one attempt.
    pub(crate) fn read(headers: &Headers, max_attempts: u32) -> Self {
        let raw = headers
            .get(ATTEMPTS_HEADER)
            .and_then(HeaderValue::as_i128)
            .unwrap_or(0);
        let ceiling = i128::from(max_attempts.max(1) - 1);
        let failures = raw.clamp(0, ceiling) as u32;
        if failures == 0 {
            return Self {
                failures,
                first_failed_at: None,
                not_before: None,
                last_error: None,
            };
        }
        let time = |name: &str| {
            headers
                .get(name)
                .and_then(HeaderValue::as_str)
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                .map(|t| t.with_timezone(&Utc))
        };
        Self {
            failures,
            first_failed_at: time(FIRST_FAILED_AT_HEADER),
            not_before: time(NOT_BEFORE_HEADER),
            last_error: headers
                .get(LAST_ERROR_HEADER)
                .and_then(HeaderValue::as_str)
                .map(str::to_owned),
        }
    }

    /// The 1-based number of the attempt this delivery is.
    pub(crate) fn attempt(&self) -> u32 {
        self.failures + 1
    }
}

/// Whether this delivery is a retry copy that went through the worker's delay path.
pub fn is_retry_copy(headers: &Headers) -> bool {
    headers.contains_key(ATTEMPTS_HEADER)
}

/// The headers as the producer sent them: without the worker's own `x-worker-*` headers. (What
/// the broker added on the delay path the transport removed already.)
pub fn original_headers(headers: &Headers) -> Headers {
    headers
        .iter()
        .filter(|(name, _)| !name.starts_with(WORKER_HEADER_PREFIX))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_attempts(value: HeaderValue) -> Headers {
        let mut h = Headers::new();
        h.insert(ATTEMPTS_HEADER.into(), value);
        h.insert(
            FIRST_FAILED_AT_HEADER.into(),
            HeaderValue::string("2026-02-10T14:22:11Z"),
        );
        h
    }

    #[test]
    fn forged_counts_are_clamped() {
        assert_eq!(RetryState::read(&Headers::new(), 5).failures, 0);
        assert_eq!(
            RetryState::read(&with_attempts(HeaderValue::I64(2)), 5).failures,
            2
        );
        assert_eq!(
            RetryState::read(&with_attempts(HeaderValue::I64(-4)), 5).failures,
            0
        );
        assert_eq!(
            RetryState::read(&with_attempts(HeaderValue::I64(i64::MAX)), 5).failures,
            4
        );
        assert_eq!(
            RetryState::read(&with_attempts(HeaderValue::string("lots")), 5).failures,
            0
        );
        assert_eq!(
            RetryState::read(&with_attempts(HeaderValue::Bool(true)), 5).failures,
            0
        );
        assert_eq!(
            RetryState::read(&with_attempts(HeaderValue::U8(9)), 1).failures,
            0
        );
    }

    #[test]
    fn first_failure_time_is_read_only_with_a_count() {
        let s = RetryState::read(&with_attempts(HeaderValue::I32(1)), 5);
        assert_eq!(
            s.first_failed_at.unwrap().to_rfc3339(),
            "2026-02-10T14:22:11+00:00"
        );
        assert_eq!(s.attempt(), 2);
        assert!(RetryState::read(&with_attempts(HeaderValue::I32(0)), 5)
            .first_failed_at
            .is_none());
    }

    #[test]
    fn original_headers_drop_what_the_worker_added() {
        let mut h = with_attempts(HeaderValue::I32(1));
        h.insert(LAST_ERROR_HEADER.into(), HeaderValue::string("boom"));
        h.insert("tenant".into(), HeaderValue::string("acme"));
        h.insert("x-producer-note".into(), HeaderValue::string("kept"));
        let original = original_headers(&h);
        assert_eq!(
            original.keys().collect::<Vec<_>>(),
            vec!["tenant", "x-producer-note"]
        );
    }
}
