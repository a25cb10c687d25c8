//! An event to publish through the outbox, and the trace context it is stamped with.

use std::collections::BTreeMap;

use opentelemetry::trace::TraceContextExt;
use rand::RngCore;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::context::Context;
use crate::telemetry::propagation;
use crate::trace_context::TRACEPARENT_HEADER;

/// An event for [`Outbox::enqueue`](super::Outbox::enqueue): published by the relay to the
/// events exchange with `event_type` as routing key, `event_id` as `message_id` and `payload` as
/// the JSON body.
///
/// ```
/// use worker_core::OutboxEvent;
///
/// let event = OutboxEvent::new("OrderPaid", "ord_91", serde_json::json!({"orderId": "ord_91"}))
///     .event_id("evt_paid_ord_91")
///     .header("tenant", "acme")
///     .version(2);
/// assert_eq!(event.id(), "evt_paid_ord_91");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEvent {
    pub(crate) event_id: String,
    pub(crate) aggregate_id: String,
    pub(crate) event_type: String,
    pub(crate) payload: serde_json::Value,
    pub(crate) headers: BTreeMap<String, String>,
    /// The trace of [`caused_by`](Self::caused_by): its id and sampled flag.
    pub(crate) trace_id: Option<(String, bool)>,
}

impl OutboxEvent {
    /// An event of `event_type` about `aggregate_id` (the entity whose events must stay in
    /// order, e.g. the order id) with a fresh random event id. The relay publishes the aggregate
    /// id as the `x-partition-key` header too (unless [`header`](Self::header) set it), so a
    /// partitioned consumer keyed by the same entity gets this aggregate's events in order.
    pub fn new(
        event_type: impl Into<String>,
        aggregate_id: impl Into<String>,
        payload: serde_json::Value,
    ) -> Self {
        Self {
            event_id: new_event_id(),
            aggregate_id: aggregate_id.into(),
            event_type: event_type.into(),
            payload,
            headers: BTreeMap::new(),
            trace_id: None,
        }
    }

    /// Uses `id` as the event id (`message_id`) instead of a random one. A deterministic id
    /// (e.g. derived from the event that caused this one) makes a re-enqueue recognisable
    /// downstream.
    pub fn event_id(mut self, id: impl Into<String>) -> Self {
        self.event_id = id.into();
        self
    }

    /// Stamps the version of the event's shape (`x-event-version`, see
    /// [`Upcasters`](crate::Upcasters)); without it consumers read the event as version 1.
    pub fn version(self, version: u32) -> Self {
        self.header(crate::EVENT_VERSION_HEADER, version.to_string())
    }

    /// Adds a string header to the published message.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Continues the trace of the delivery being handled: when no OpenTelemetry span is current,
    /// the published event still joins `ctx`'s trace (with an OpenTelemetry layer installed the
    /// handler's span is used anyway).
    pub fn caused_by(mut self, ctx: &Context) -> Self {
        self.trace_id = Some((ctx.trace_id().to_owned(), ctx.trace_sampled));
        self
    }

    /// The event id.
    pub fn id(&self) -> &str {
        &self.event_id
    }

    /// The headers to store: the caller's, plus `traceparent`, `tracestate` and `baggage` of the
    /// current span (or of the trace given by [`caused_by`](Self::caused_by)) unless the caller
    /// set `traceparent`, written by the W3C propagators.
    pub(crate) fn headers_with_trace(&self) -> BTreeMap<String, String> {
        let mut headers = self.headers.clone();
        if !headers.contains_key(TRACEPARENT_HEADER) {
            let span = tracing::Span::current();
            let context = span.context();
            let otel_span = context.span();
            let span_context = otel_span.span_context();
            let trace = if span_context.is_valid() {
                Some((
                    span_context.trace_id().to_string(),
                    span_context.is_sampled(),
                ))
            } else {
                self.trace_id.clone()
            };
            if let Some((trace_id, sampled)) = trace {
                propagation::inject_headers(&span, &trace_id, sampled, |key, value| {
                    headers.entry(key.to_owned()).or_insert(value);
                });
            }
        }
        headers
    }
}

/// A random id in the UUID v4 text form (`8-4-4-4-12` lowercase hex digits).
pub(crate) fn new_event_id() -> String {
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex = crate::trace_context::hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_look_like_uuids_and_differ() {
        let a = new_event_id();
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert_ne!(a, new_event_id());
    }

    #[test]
    fn without_a_trace_no_traceparent_is_invented() {
        let event = OutboxEvent::new("E", "a", serde_json::json!({}));
        assert!(!event.headers_with_trace().contains_key("traceparent"));
        let mut traced = event.clone();
        traced.trace_id = Some(("4bf92f3577b34da6a3ce929d0e0e4736".into(), true));
        let parent = traced.headers_with_trace()["traceparent"].clone();
        assert!(parent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(parent.ends_with("-01"), "{parent}");
        traced.trace_id = Some(("4bf92f3577b34da6a3ce929d0e0e4736".into(), false));
        let unsampled = traced.headers_with_trace()["traceparent"].clone();
        assert!(
            unsampled.ends_with("-00"),
            "an unsampled trace stays so: {unsampled}"
        );
    }
}
