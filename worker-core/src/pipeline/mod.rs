//! The per-delivery pipeline (`docs/contracts.md` §3): open the envelope → decode → claim the
//! dedup row → run the handler → commit, and decide how the transport settles the delivery.
//!
//! The pipeline never talks to the broker: it returns a [`Disposition`] and the transport carries
//! it out, acking only after the outcome is durable. One step per file:
//! [`envelope`] (ids, type, attempts, trace), [`decode`] (payload), [`transaction`] (dedup +
//! handler + commit), [`failure`] (retry copy or dead-letter record), and [`batch`] (several
//! deliveries of one dedup handler in one transaction, a savepoint each).

pub(crate) mod batch;
pub(crate) mod decode;
pub(crate) mod delivery_limit;
pub(crate) mod disposition;
pub(crate) mod envelope;
pub(crate) mod failure;
pub(crate) mod in_place;
pub(crate) mod transaction;

use std::sync::Arc;

use sqlx::PgPool;
use tracing::Instrument;

pub use crate::clock::{Clock, Jitter};
use crate::context::Context;
use crate::dedup::store::DedupStore;
use crate::handler::{Handler, HandlerSpec};
use crate::message::inbound::InboundMessage;
use crate::observer::Observer;
use crate::state::States;
use crate::telemetry::propagation;
use crate::transport::{self, ProcessSpan, Spans};
use disposition::Disposition;
use envelope::Envelope;

/// What every delivery of every handler shares: the database, the dedup table, who we are.
#[derive(Clone)]
pub struct Runtime {
    /// The worker's connection pool; `None` only in the test harness without a database (which
    /// then refuses `dedup` handlers, so only [`Context::pool`] can find it missing).
    pub pool: Option<PgPool>,
    /// The dedup table.
    pub dedup: DedupStore,
    /// The worker's name in dead-letter records (`consumer`).
    pub consumer: String,
    /// Telemetry and test hooks.
    pub observer: Arc<dyn Observer>,
    /// Bodies larger than this are dead-lettered as poison without being decoded.
    pub max_payload_bytes: usize,
    /// The transport's spans (its attributes on the core's process and publish spans).
    pub spans: Arc<dyn Spans>,
    /// The application state handlers take as `State<T>`.
    pub states: States,
    /// The time stamped on retry headers and dead-letter records ([`Clock::system`] in a worker).
    pub clock: Clock,
    /// The random part of retry delays ([`Jitter::random`] in a worker).
    pub jitter: Jitter,
    /// The longest wait a handler may ask for with
    /// [`HandlerError::retry_after`](crate::HandlerError::retry_after)
    /// ([`WorkerConfig::max_retry_after`](crate::WorkerConfig::max_retry_after)).
    pub max_retry_after: std::time::Duration,
    /// What error types mean, beyond what the handlers say ([`crate::ErrorPolicies`]).
    pub error_policies: crate::ErrorPolicies,
    /// How older versions of events become the versions handlers know ([`crate::Upcasters`]).
    pub upcasters: crate::Upcasters,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("dedup", &self.dedup)
            .field("consumer", &self.consumer)
            .field("spans", &self.spans)
            .finish_non_exhaustive()
    }
}

/// Processes one delivery for `handler` under its effective `spec` (configuration applied).
pub async fn process<H: Handler>(
    handler: &H,
    spec: &HandlerSpec,
    runtime: &Runtime,
    message: &InboundMessage,
) -> Disposition {
    let (envelope, span) = open(spec, runtime, message);
    let disposition = async {
        match prepare::<H>(spec, runtime, message, &envelope) {
            Prepared::Settled(disposition) => *disposition,
            Prepared::Ready { event, ctx } => {
                let outcome = transaction::run(handler, spec, runtime, event, &ctx).await;
                conclude(spec, runtime, message, &envelope, outcome)
            }
        }
    }
    .instrument(span.clone())
    .await;
    finish(&span, disposition)
}

/// Opens the envelope and the delivery's consumer span (built by the transport with the core's
/// fields, see [`Spans`]; its trace attached).
pub(crate) fn open(
    spec: &HandlerSpec,
    runtime: &Runtime,
    message: &InboundMessage,
) -> (Envelope, tracing::Span) {
    let ceiling = runtime
        .error_policies
        .attempt_ceiling(spec.retry.max_attempts);
    let mut envelope = Envelope::open(message, ceiling);
    let span = runtime.spans.process(&ProcessSpan {
        handler: spec.name,
        event_id: envelope.event_id.as_deref().unwrap_or(""),
        event_type: &envelope.event_type,
        attempt: envelope.retry.attempt(),
        exchange: &envelope.exchange,
        routing_key: &envelope.routing_key,
        correlation_id: envelope.correlation_id.as_deref().unwrap_or(""),
        body_size: message.body.len(),
    });
    transport::debug_check_process_span(&span);
    propagation::attach(&span, &mut envelope.trace);
    span.record("trace_id", envelope.trace.trace_id.as_str());
    (envelope, span)
}

/// Records the outcome on the delivery's span, and logs the deliveries that end without a
/// failure: a duplicate at INFO (rare, and the proof that dedup did its job), a processed event at
/// DEBUG (one line per event would flood the log at thousands per second; the metrics count
/// them, `RUST_LOG=worker_core=debug` shows them). Retries (WARN) and dead letters (ERROR) are
/// logged where they are decided, so every delivery gets one line.
pub(crate) fn finish(span: &tracing::Span, disposition: Disposition) -> Disposition {
    match &disposition {
        Disposition::Processed => tracing::debug!(parent: span, "processed"),
        Disposition::Duplicate => tracing::info!(
            parent: span,
            "duplicate: processed before, acked without running the handler"
        ),
        _ => {}
    }
    span.record("worker.outcome", disposition.outcome_name());
    if !matches!(disposition, Disposition::Processed | Disposition::Duplicate) {
        span.record("otel.status_code", "error");
    }
    disposition
}

/// A delivery after the checks that need no database.
pub(crate) enum Prepared<E> {
    /// Settled already: poison (too large, no usable id, undecodable, no partition key).
    Settled(Box<Disposition>),
    /// Ready for the handler.
    Ready {
        /// The decoded event.
        event: E,
        /// The handler's context.
        ctx: Context,
    },
}

/// Size limit, event id, payload and partition key; call inside the delivery's span.
pub(crate) fn prepare<H: Handler>(
    spec: &HandlerSpec,
    runtime: &Runtime,
    message: &InboundMessage,
    envelope: &Envelope,
) -> Prepared<H::Event> {
    let poison = |problem: &str| {
        Prepared::Settled(Box::new(failure::dead_letter(
            spec,
            runtime,
            message,
            envelope,
            problem,
            crate::ErrorKind::Poison,
        )))
    };
    if message.body.len() > runtime.max_payload_bytes {
        return poison(&format!(
            "payload is {} bytes; the limit is {} (WORKER_MAX_PAYLOAD_BYTES)",
            message.body.len(),
            runtime.max_payload_bytes
        ));
    }
    let event_id = match &envelope.event_id {
        Ok(id) => id.clone(),
        Err(problem) => return poison(&problem.to_string()),
    };
    if let Some(deferred) = failure::defer_if_early(spec, runtime, message, envelope) {
        return Prepared::Settled(Box::new(deferred));
    }
    let event: H::Event = match decode::event(
        &message.body,
        &message.properties.headers,
        &envelope.event_type,
        spec.version,
        &runtime.upcasters,
    ) {
        Ok(event) => event,
        Err(problem) => return poison(&problem.to_string()),
    };
    if let Some(partitioning) = &spec.partition {
        if let Err(problem) = crate::partition::key_of(partitioning, message) {
            return poison(&problem.to_string());
        }
    }
    let ctx = envelope.context(event_id, spec, runtime.pool.clone(), runtime.states.clone());
    Prepared::Ready { event, ctx }
}

/// The disposition after the transaction step; call inside the delivery's span.
pub(crate) fn conclude(
    spec: &HandlerSpec,
    runtime: &Runtime,
    message: &InboundMessage,
    envelope: &Envelope,
    outcome: transaction::Outcome,
) -> Disposition {
    match outcome {
        transaction::Outcome::Done => Disposition::Processed,
        transaction::Outcome::Duplicate => Disposition::Duplicate,
        transaction::Outcome::DatabaseUnavailable(reason) => Disposition::GiveBack { reason },
        transaction::Outcome::Failed(error) => {
            failure::after_failure(spec, runtime, message, envelope, &error)
        }
    }
}
