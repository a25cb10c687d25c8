//! W3C trace context across attempts: the process span of a delivery joins the producer's trace
//! (or the trace of the event's previous attempt), and everything the worker publishes carries the
//! current span as its parent. Reading and writing the headers is the OpenTelemetry W3C
//! TraceContext and Baggage propagators' job ([`crate::trace_context`]); the parent's sampled flag
//! is kept, so the SDK's sampler (parent-based by default, `OTEL_TRACES_SAMPLER`) decides.

use opentelemetry::trace::{SpanContext, TraceContextExt, TraceFlags, TraceId};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::trace_context::{self, random_span_id, TraceContext, TraceOrigin, TRACEPARENT_HEADER};

/// Makes `span` part of `trace`.
///
/// A delivery that carried trace context becomes a child of the remote span it names, sampled or
/// not as that span says. A delivery that carried none starts a trace: when an OpenTelemetry layer
/// is installed its new root span's trace id is adopted (so logs, spans and the dead-letter record
/// agree); without one the id the worker generated stands. The producer's baggage goes with the
/// span's context either way.
pub(crate) fn attach(span: &tracing::Span, trace: &mut TraceContext) {
    let _ = span.set_parent(trace.parent.clone());
    if trace.origin == TraceOrigin::Started {
        let context = span.context();
        let span_context = context.span().span_context().clone();
        if span_context.is_valid() {
            trace.trace_id = span_context.trace_id().to_string();
            trace.parent = context;
        }
    }
}

/// The context a message published from within `span` carries: the span's own when OpenTelemetry
/// tracks it in trace `trace_id`, else a fresh span id in that trace, `sampled` or not, under
/// `parent`'s baggage and trace state.
fn outgoing(
    span: &tracing::Span,
    trace_id: &str,
    sampled: bool,
    parent: &opentelemetry::Context,
) -> opentelemetry::Context {
    let context = span.context();
    let own = context.span().span_context().clone();
    if own.is_valid() && own.trace_id().to_string() == trace_id {
        return context;
    }
    let Ok(trace_id) = TraceId::from_hex(trace_id) else {
        return parent.clone();
    };
    let flags = if sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    let state = parent.span().span_context().trace_state().clone();
    parent.with_remote_span_context(SpanContext::new(
        trace_id,
        random_span_id(),
        flags,
        true,
        state,
    ))
}

/// The `traceparent` for a message published from within `span`, in trace `trace_id`: the span's
/// own context when OpenTelemetry tracks it, else a fresh span id in the same trace (sampled).
pub fn traceparent(span: &tracing::Span, trace_id: &str) -> String {
    traceparent_for(span, trace_id, true, &opentelemetry::Context::new())
}

/// [`traceparent`] for a message caused by a delivery of `trace`: without an OpenTelemetry span
/// it keeps the delivery's sampled flag.
pub(crate) fn traceparent_in(span: &tracing::Span, trace: &TraceContext) -> String {
    traceparent_for(span, &trace.trace_id, trace.sampled(), &trace.parent)
}

fn traceparent_for(
    span: &tracing::Span,
    trace_id: &str,
    sampled: bool,
    parent: &opentelemetry::Context,
) -> String {
    let mut traceparent = None;
    trace_context::inject(&outgoing(span, trace_id, sampled, parent), |key, value| {
        if key == TRACEPARENT_HEADER {
            traceparent = Some(value);
        }
    });
    traceparent.unwrap_or_else(|| {
        let flags = if sampled { "01" } else { "00" };
        format!("00-{trace_id}-{}-{flags}", random_span_id())
    })
}

/// The trace headers (`traceparent`, `tracestate`, `baggage`) for a message published from
/// within `span` in trace `trace_id`, written with `set`.
pub(crate) fn inject_headers(
    span: &tracing::Span,
    trace_id: &str,
    sampled: bool,
    set: impl FnMut(&str, String),
) {
    let context = outgoing(span, trace_id, sampled, &opentelemetry::Context::new());
    trace_context::inject(&context, set);
}
