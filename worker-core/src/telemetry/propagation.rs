//! W3C trace context across attempts: the process span of a delivery joins the producer's trace
//! (or the trace of the event's previous attempt), and everything the worker publishes carries the
//! current span as its parent.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use rand::RngCore;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::trace_context::{TraceContext, TraceOrigin};

/// Makes `span` part of `trace`.
///
/// A delivery that carried trace context becomes a child of the remote span it names. A delivery
/// that carried none starts a trace: when an OpenTelemetry layer is installed its new root span's
/// trace id is adopted (so logs, spans and the dead-letter record agree); without one the id the
/// worker generated stands.
pub(crate) fn attach(span: &tracing::Span, trace: &mut TraceContext) {
    if trace.origin == TraceOrigin::Started {
        let context = span.context();
        let span_context = context.span().span_context().clone();
        if span_context.is_valid() {
            trace.trace_id = span_context.trace_id().to_string();
        }
        return;
    }
    let Ok(trace_id) = TraceId::from_hex(&trace.trace_id) else {
        return;
    };
    let span_id = trace
        .parent_span_id
        .as_deref()
        .and_then(|id| SpanId::from_hex(id).ok())
        .unwrap_or_else(random_span_id);
    let state = trace
        .tracestate
        .as_deref()
        .and_then(|s| s.parse::<TraceState>().ok())
        .unwrap_or_default();
    let remote = SpanContext::new(trace_id, span_id, TraceFlags::SAMPLED, true, state);
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
}

/// The `traceparent` for a message published from within `span`, in trace `trace_id`: the span's
/// own context when OpenTelemetry tracks it, else a fresh span id in the same trace.
pub fn traceparent(span: &tracing::Span, trace_id: &str) -> String {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    if span_context.is_valid() && span_context.trace_id().to_string() == trace_id {
        return format!(
            "00-{}-{}-{:02x}",
            span_context.trace_id(),
            span_context.span_id(),
            span_context.trace_flags().to_u8()
        );
    }
    format!("00-{trace_id}-{}-01", random_span_id())
}

fn random_span_id() -> SpanId {
    let mut bytes = [0u8; 8];
    while bytes == [0; 8] {
        rand::thread_rng().fill_bytes(&mut bytes);
    }
    SpanId::from_bytes(bytes)
}
