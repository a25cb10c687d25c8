//! After a failure: a retry copy for the broker's delay path, or a dead-letter record.
//!
//! A retry says "redeliver this copy after `delay`, as attempt `failures + 1`"; how the broker
//! holds it back (delay queues, TTLs) is the transport's business.

use super::disposition::{Disposition, OutboundMessage};
use super::envelope::Envelope;
use super::Runtime;
use crate::dead_letter::record::{format_time, DeadLetterRecord, FailureMetadata, OriginalMessage};
use crate::handler::error::{ErrorKind, HandlerError};
use crate::handler::HandlerSpec;
use crate::message::headers::HeaderValue;
use crate::message::inbound::{InboundMessage, Properties};
use crate::retry::attempts::{
    ATTEMPTS_HEADER, FIRST_FAILED_AT_HEADER, LAST_ERROR_HEADER, NOT_BEFORE_HEADER,
    ORIGINAL_EXCHANGE_HEADER, ORIGINAL_ROUTING_KEY_HEADER, TRACE_ID_HEADER,
    WORKER_TRACEPARENT_HEADER,
};
use crate::telemetry::propagation;
use crate::trace_context::TRACEPARENT_HEADER;
use crate::transport::{PublishKind, PublishSpan};

/// Header on dead-letter messages: the handler that gave up.
pub(crate) const DLQ_HANDLER_HEADER: &str = "x-worker-handler";
/// Header on dead-letter messages: `poison` or `retryable`.
pub(crate) const DLQ_ERROR_KIND_HEADER: &str = "x-worker-error-kind";

/// Longest `lastError` kept in a retry copy's header (the record keeps the whole text).
const MAX_ERROR_HEADER_CHARS: usize = 500;

/// Decides between a retry and a dead letter after the handler failed with `error`.
pub(crate) fn after_failure(
    spec: &HandlerSpec,
    runtime: &Runtime,
    message: &InboundMessage,
    envelope: &Envelope,
    error: &HandlerError,
) -> Disposition {
    let failures = envelope.retry.failures + 1;
    let decision = runtime.error_policies.decide(spec.name, error);
    if decision.kind == ErrorKind::Poison {
        return dead_letter(
            spec,
            runtime,
            message,
            envelope,
            error.message(),
            ErrorKind::Poison,
        );
    }
    let schedule = decision.retry.as_ref().unwrap_or(&spec.retry);
    if failures >= schedule.max_attempts {
        return dead_letter(
            spec,
            runtime,
            message,
            envelope,
            error.message(),
            ErrorKind::Retryable,
        );
    }
    let backoff = schedule.delay_with(failures, &runtime.jitter);
    let asked = decision
        .retry_after
        .map(|wait| wait.min(runtime.max_retry_after));
    let delay = asked.map_or(backoff, |wait| wait.max(backoff));
    match asked {
        Some(retry_after) => tracing::warn!(
            error = error.message(),
            failures,
            retry_after_ms = retry_after.as_millis() as u64,
            "retryable failure; the handler asked to retry after a wait; scheduling a retry"
        ),
        None => tracing::warn!(
            error = error.message(),
            failures,
            "retryable failure; scheduling a retry"
        ),
    }
    // Written to the millisecond, rounded up: the copy is never due before `delay` has passed.
    let not_before =
        asked.map(|_| runtime.clock.now() + delay + std::time::Duration::from_millis(1));
    let (message, span) = retry_copy(
        spec,
        runtime,
        message,
        envelope,
        failures,
        error.message(),
        not_before,
    );
    Disposition::Retry {
        message,
        delay,
        failures,
        error: error.message().to_owned(),
        span,
    }
}

/// Parks a retry copy again if the wait its handler asked for has not ended (`None` when it is
/// due): the broker's delay queues hold a copy back for at most their longest level, so a longer
/// wait takes several trips. Partitioned handlers retry in place and never see such a copy early.
pub(crate) fn defer_if_early(
    spec: &HandlerSpec,
    runtime: &Runtime,
    message: &InboundMessage,
    envelope: &Envelope,
) -> Option<Disposition> {
    let not_before = envelope.retry.not_before?;
    let remaining = not_before - runtime.clock.now();
    if spec.partition.is_some() || remaining <= chrono::Duration::zero() {
        return None;
    }
    // A millisecond more: TTLs are whole milliseconds, and a copy must never run early.
    let delay = (remaining.to_std().ok()? + std::time::Duration::from_millis(1))
        .min(runtime.max_retry_after);
    tracing::debug!(
        delay_ms = delay.as_millis() as u64,
        "retry copy early for the wait its handler asked for; parking it again"
    );
    let failures = envelope.retry.failures;
    let error = envelope.retry.last_error.as_deref().unwrap_or("");
    let (message, span) = retry_copy(
        spec,
        runtime,
        message,
        envelope,
        failures,
        error,
        Some(not_before),
    );
    Some(Disposition::Defer {
        message,
        delay,
        failures,
        span,
    })
}

/// The retry copy after `failures` failures (the last one `error`) and its producer span; it
/// carries [`NOT_BEFORE_HEADER`] when the handler asked for a wait.
fn retry_copy(
    spec: &HandlerSpec,
    runtime: &Runtime,
    message: &InboundMessage,
    envelope: &Envelope,
    failures: u32,
    error: &str,
    not_before: Option<chrono::DateTime<chrono::Utc>>,
) -> (OutboundMessage, tracing::Span) {
    let first_failed_at = envelope
        .retry
        .first_failed_at
        .unwrap_or_else(|| runtime.clock.now());
    let mut properties = message.properties.clone();
    properties.headers = envelope.original_headers.clone();
    let headers = &mut properties.headers;
    headers.insert(ATTEMPTS_HEADER.into(), HeaderValue::I64(failures.into()));
    headers.insert(
        FIRST_FAILED_AT_HEADER.into(),
        HeaderValue::string(format_time(first_failed_at)),
    );
    headers.insert(
        LAST_ERROR_HEADER.into(),
        HeaderValue::string(
            error
                .chars()
                .take(MAX_ERROR_HEADER_CHARS)
                .collect::<String>(),
        ),
    );
    headers.insert(
        ORIGINAL_EXCHANGE_HEADER.into(),
        HeaderValue::string(envelope.exchange.clone()),
    );
    headers.insert(
        ORIGINAL_ROUTING_KEY_HEADER.into(),
        HeaderValue::string(envelope.routing_key.clone()),
    );
    if let Some(not_before) = not_before {
        headers.insert(
            NOT_BEFORE_HEADER.into(),
            HeaderValue::string(format_time(not_before)),
        );
    }
    let span = publish_span(spec, runtime, PublishKind::Retry);
    let traceparent = propagation::traceparent_in(&span, &envelope.trace);
    headers.insert(
        WORKER_TRACEPARENT_HEADER.into(),
        HeaderValue::string(traceparent),
    );
    let copy = OutboundMessage {
        body: message.body.clone(),
        properties,
    };
    (copy, span)
}

/// The producer span of a retry copy or dead letter, a child of the delivery's process span.
fn publish_span(spec: &HandlerSpec, runtime: &Runtime, kind: PublishKind) -> tracing::Span {
    runtime.spans.publish(&PublishSpan {
        handler: spec.name,
        kind,
    })
}

/// Builds the dead-letter record of §5 and the message that carries it.
pub(crate) fn dead_letter(
    spec: &HandlerSpec,
    runtime: &Runtime,
    message: &InboundMessage,
    envelope: &Envelope,
    last_error: &str,
    kind: ErrorKind,
) -> Disposition {
    let now = runtime.clock.now();
    let attempts = envelope.retry.failures + 1;
    tracing::error!(error = last_error, error_kind = %kind, attempts, "dead-lettering the event");
    let mut original_properties = message.properties.clone();
    original_properties.headers = envelope.original_headers.clone();
    original_properties.expiration = None;
    let record = DeadLetterRecord {
        original_message: OriginalMessage::new(
            envelope.event_id.as_ref().ok().cloned(),
            envelope.event_type.clone(),
            envelope.routing_key.clone(),
            envelope.exchange.clone(),
            &message.body,
            original_properties,
        ),
        failure_metadata: FailureMetadata {
            attempts,
            first_failed_at: envelope.retry.first_failed_at.unwrap_or(now),
            last_failed_at: now,
            last_error: last_error.to_owned(),
            error_kind: kind,
            consumer: runtime.consumer.clone(),
            handler: spec.name.to_owned(),
            trace_id: envelope.trace.trace_id.clone(),
        },
    };
    let mut properties = Properties {
        message_id: message
            .properties
            .message_id
            .clone()
            .filter(|id| !id.is_empty() && id.len() <= 255),
        kind: Some(envelope.event_type.clone()),
        content_type: Some("application/json".into()),
        delivery_mode: Some(2),
        timestamp: u64::try_from(now.timestamp()).ok(),
        correlation_id: message.properties.correlation_id.clone(),
        ..Properties::default()
    };
    properties
        .headers
        .insert(DLQ_HANDLER_HEADER.into(), HeaderValue::string(spec.name));
    properties.headers.insert(
        DLQ_ERROR_KIND_HEADER.into(),
        HeaderValue::string(kind.as_str()),
    );
    properties.headers.insert(
        TRACE_ID_HEADER.into(),
        HeaderValue::string(envelope.trace.trace_id.clone()),
    );
    let span = publish_span(spec, runtime, PublishKind::DeadLetter);
    let traceparent = propagation::traceparent_in(&span, &envelope.trace);
    properties
        .headers
        .insert(TRACEPARENT_HEADER.into(), HeaderValue::string(traceparent));
    let body = serde_json::to_vec(&record)
        .expect("a record of strings, numbers and JSON values always serializes");
    Disposition::DeadLetter {
        message: OutboundMessage { body, properties },
        record: Box::new(record),
        span,
    }
}
