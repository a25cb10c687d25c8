//! What a transport implements for the core, and what it needs from it.
//!
//! The core decides; a transport (a crate that talks to one broker) carries the decision out. The
//! core never names the broker: the broker's own span attributes, header conventions and queue
//! layout stay in the transport. This module is where the contract between the two lives.
//!
//! An application never needs this module: what it uses is at the crate root (and re-exported by
//! the transport crate). A transport uses:
//!
//! - [`pipeline`]: [`pipeline::process`] and [`pipeline::process_batch`] turn a delivery (or a
//!   batch) into a [`pipeline::Disposition`] for the transport to make durable before it acks;
//!   [`pipeline::Runtime`] is what they run with.
//! - [`Spans`]: the core opens a consumer span per delivery and a producer span per retry copy or
//!   dead letter, and the transport adds its attributes (such as `messaging.system`).
//! - A delivery the broker dead-lettered past its delivery limit is handed to the core as a
//!   [`DeliveryLimitDeath`] (see [`delivery_limit_exceeded`]).
//! - The message model ([`message`]), the headers the core writes ([`retry`], [`partition`],
//!   [`trace_context`]), dead-letter helpers ([`dead_letter`]), the handler registry
//!   ([`registry`]), the dedup store and schema names ([`dedup`]), settings parsing ([`config`]),
//!   the outbox relay loop ([`outbox`]), migrations ([`migrations`], [`versioning`]), telemetry
//!   ([`telemetry`]), observers ([`observer`]) and the stop signal ([`shutdown`]).

use std::fmt;

pub use crate::pipeline::delivery_limit::{delivery_limit_exceeded, DeliveryLimitDeath};

/// Builds the core's spans with the transport's attributes added.
///
/// The pipeline calls [`process`](Spans::process) once per delivery and
/// [`publish`](Spans::publish) once per retry copy or dead letter. Build the span with
/// [`process_span!`] or [`publish_span!`], which declare the core's fields and take the
/// transport's after them:
///
/// ```
/// use worker_core::transport::{process_span, publish_span, ProcessSpan, PublishSpan, Spans};
///
/// #[derive(Debug)]
/// struct MySpans;
///
/// impl Spans for MySpans {
///     fn process(&self, span: &ProcessSpan<'_>) -> tracing::Span {
///         process_span!(span, "messaging.system" = "my-broker")
///     }
///     fn publish(&self, span: &PublishSpan) -> tracing::Span {
///         publish_span!(span, "messaging.system" = "my-broker", "messaging.destination.name" = "")
///     }
/// }
/// ```
///
/// A span built otherwise must declare, besides its own attributes, the fields the core records
/// later (as `tracing::field::Empty`): on the process span [`PROCESS_RECORDED_FIELDS`], on the
/// publish span `otel.status_code`. It should also carry the values of [`ProcessSpan`] under the
/// names [`process_span!`] gives them, which logs, traces and dashboards rely on. Spans are
/// created on the delivery's path: keep `process` free of allocations.
pub trait Spans: Send + Sync + fmt::Debug + 'static {
    /// The consumer span of one delivery.
    fn process(&self, span: &ProcessSpan<'_>) -> tracing::Span;

    /// The producer span of a retry copy or dead letter (a child of the current process span).
    fn publish(&self, span: &PublishSpan) -> tracing::Span;
}

/// Fields of the process span that the core records after the span is created: the trace id
/// (once the delivery's trace is attached), the outcome and, for anything but success or a
/// duplicate, `otel.status_code = "error"`.
pub const PROCESS_RECORDED_FIELDS: [&str; 3] = ["trace_id", "worker.outcome", "otel.status_code"];

/// What the core knows about a delivery when it opens its process span.
#[derive(Debug, Clone, Copy)]
pub struct ProcessSpan<'a> {
    /// The handler's name (its consumer group).
    pub handler: &'static str,
    /// The event id, or `""` when the delivery has none.
    pub event_id: &'a str,
    /// The event type.
    pub event_type: &'a str,
    /// The 1-based attempt this delivery is.
    pub attempt: u32,
    /// The exchange the producer published to (a retry copy carries it in a header).
    pub exchange: &'a str,
    /// The routing key the producer used (a retry copy carries it in a header).
    pub routing_key: &'a str,
    /// The producer's correlation id, or `""`.
    pub correlation_id: &'a str,
    /// The body's size in bytes.
    pub body_size: usize,
}

/// What the core knows about a retry copy or dead letter when it opens its publish span.
#[derive(Debug, Clone, Copy)]
pub struct PublishSpan {
    /// The handler whose delivery it is.
    pub handler: &'static str,
    /// A retry copy or a dead letter.
    pub kind: PublishKind,
}

/// Which message a publish span is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishKind {
    /// A retry copy, redelivered after its delay.
    Retry,
    /// A dead-letter record for the handler's dead-letter queue.
    DeadLetter,
}

impl PublishKind {
    /// The suffix of the span's name: `retry` or `dlq` (`publish <handler>.<suffix>`).
    pub fn as_str(self) -> &'static str {
        match self {
            PublishKind::Retry => "retry",
            PublishKind::DeadLetter => "dlq",
        }
    }
}

/// Spans with only the core's fields, for transports without attributes of their own, tests and
/// benchmarks.
#[derive(Debug, Clone, Copy, Default)]
pub struct CoreSpans;

impl Spans for CoreSpans {
    fn process(&self, span: &ProcessSpan<'_>) -> tracing::Span {
        process_span!(span)
    }

    fn publish(&self, span: &PublishSpan) -> tracing::Span {
        publish_span!(span)
    }
}

/// The consumer span of one delivery (`process <handler>`, kind consumer) from a
/// [`ProcessSpan`], with the core's fields, followed by the transport's own `name = value` fields.
///
/// The core's fields: `otel.name`, `otel.kind`, `otel.status_code`,
/// `messaging.operation.name` and `.type` (`process`), `messaging.destination.name` (the
/// exchange), `messaging.consumer.group.name` (the handler), `messaging.message.id`,
/// `messaging.message.conversation_id`, `messaging.message.body.size`, `worker.handler`,
/// `worker.attempt`, `worker.outcome`, and for log lines `handler`, `event_id`, `event_type`,
/// `attempt`, `trace_id`. The span's target is `worker_core::pipeline`, wherever it is built, so
/// log filters keep working.
#[doc(inline)]
pub use crate::__transport_process_span as process_span;

/// The producer span of a retry copy or dead letter (`publish <handler>.retry` or
/// `publish <handler>.dlq`, kind producer) from a [`PublishSpan`], with the core's fields,
/// followed by the transport's own `name = value` fields.
///
/// The core's fields: `otel.name`, `otel.kind`, `otel.status_code` (empty: the transport records
/// `error` when the publish fails), `messaging.operation.name` (`publish`),
/// `messaging.operation.type` (`send`) and `worker.handler`. The destination is the transport's
/// to name. The span's target is `worker_core::pipeline::failure`.
#[doc(inline)]
pub use crate::__transport_publish_span as publish_span;

#[doc(hidden)]
#[macro_export]
macro_rules! __transport_process_span {
    ($span:expr $(, $($transport:tt)*)?) => {{
        let span: &$crate::transport::ProcessSpan<'_> = $span;
        $crate::__private::tracing::info_span!(
            target: "worker_core::pipeline",
            "process",
            "otel.name" = %::core::format_args!("process {}", span.handler),
            "otel.kind" = "consumer",
            "otel.status_code" = $crate::__private::tracing::field::Empty,
            "messaging.operation.name" = "process",
            "messaging.operation.type" = "process",
            "messaging.destination.name" = span.exchange,
            "messaging.consumer.group.name" = span.handler,
            "messaging.message.id" = span.event_id,
            "messaging.message.conversation_id" = span.correlation_id,
            "messaging.message.body.size" = span.body_size,
            "worker.handler" = span.handler,
            "worker.attempt" = span.attempt,
            "worker.outcome" = $crate::__private::tracing::field::Empty,
            handler = span.handler,
            event_id = span.event_id,
            event_type = span.event_type,
            attempt = span.attempt,
            trace_id = $crate::__private::tracing::field::Empty
            $(, $($transport)*)?
        )
    }};
}

#[doc(hidden)]
#[macro_export]
macro_rules! __transport_publish_span {
    ($span:expr $(, $($transport:tt)*)?) => {{
        let span: &$crate::transport::PublishSpan = $span;
        $crate::__private::tracing::info_span!(
            target: "worker_core::pipeline::failure",
            "publish",
            "otel.name" = %::core::format_args!("publish {}.{}", span.handler, span.kind.as_str()),
            "otel.kind" = "producer",
            "otel.status_code" = $crate::__private::tracing::field::Empty,
            "messaging.operation.name" = "publish",
            "messaging.operation.type" = "send",
            "worker.handler" = span.handler
            $(, $($transport)*)?
        )
    }};
}

/// Checks, in debug builds, that a transport's process span declares the fields the core records
/// (a field a span does not declare is silently dropped by `record`).
pub(crate) fn debug_check_process_span(span: &tracing::Span) {
    if cfg!(debug_assertions) {
        if let Some(metadata) = span.metadata() {
            for name in PROCESS_RECORDED_FIELDS {
                debug_assert!(
                    metadata.fields().field(name).is_some(),
                    "the transport's process span does not declare `{name}`: build it with \
                     worker_core::transport::process_span!"
                );
            }
        }
    }
}

/// Each handler's circuit breaker: the transport asks it before the pipeline runs and tells it
/// each outcome.
pub mod breaker {
    pub use crate::breaker::{Admission, Breaker, BreakerState, Verdict};
}

/// Reading settings: the environment snapshot, the value parsers and URL redaction.
pub mod config {
    pub use crate::config::{
        app_name, format_duration, handler_env_name, parse_bool, parse_duration, parse_positive,
        redact_url, RedactedUrl, Secret, Variables, DEFAULT_DATABASE_URL, DEFAULT_MAX_RETRY_AFTER,
        MAX_DEFAULT_BATCH_SIZE,
    };
    pub use crate::handler::DEFAULT_CONCURRENCY;
}

/// Dead-letter records: how a body is encoded and how times are written.
pub mod dead_letter {
    pub use crate::dead_letter::record::{
        format_time, BodyEncoding, FailureMetadata, OriginalMessage,
    };
    pub use crate::dead_letter::store::{
        DeadLetterStore, GroupRow, RowStatus, Selection, StoredDeadLetter, StoredRow,
    };
}

/// The dedup store and the schema names it is kept in.
pub mod dedup {
    pub use crate::dedup::identifier::{Identifier, InvalidIdentifier};
    pub use crate::dedup::store::DedupStore;
}

/// The broker-neutral message model.
pub mod message {
    pub use crate::message::headers::{HeaderValue, Headers};
    pub use crate::message::inbound::Properties;
}

/// The framework's versioned migrations.
pub mod migrations {
    pub use crate::migrations::{
        lock_key, run, run_framework, Applied, Component, Migration, MigrationError, FRAMEWORK,
        SCHEMA_PLACEHOLDER, TABLE,
    };
}

/// Observers: a list of them as one, and one that does nothing.
pub mod observer {
    pub use crate::observer::{NoopObserver, Observers};
}

/// The outbox relay loop, for a transport's sink to publish its rows.
pub mod outbox {
    pub use crate::outbox::relay::NoRelayObserver;
    pub use crate::outbox::{
        migrate, OutboxMessage, OutboxSink, OutboxTable, RelayLoop, SinkError,
    };
}

/// Partitioned handlers: the routing header and the key of a delivery.
pub mod partition {
    pub use crate::partition::{key_of, PartitionError, MAX_PARTITIONS, PARTITION_KEY_HEADER};
    pub use crate::pipeline::in_place::next_attempt;
}

/// The delivery pipeline: decode, dedup transaction, classification, disposition.
pub mod pipeline {
    pub use crate::pipeline::batch::process_batch;
    pub use crate::pipeline::decode::{payload, DecodeError};
    pub use crate::pipeline::disposition::{Disposition, OutboundMessage};
    pub use crate::pipeline::envelope::{Envelope, EnvelopeError, MAX_EVENT_ID_BYTES};
    pub use crate::pipeline::{process, Clock, Jitter, Runtime};
    pub use crate::state::States;
}

/// The handler registry.
pub mod registry {
    pub use crate::registry::{ErasedHandler, Registry, RegistryError};
}

/// The headers a retry copy carries.
pub mod retry {
    pub use crate::retry::attempts::{
        is_retry_copy, original_headers, ATTEMPTS_HEADER, FIRST_FAILED_AT_HEADER,
        LAST_ERROR_HEADER, NOT_BEFORE_HEADER, ORIGINAL_EXCHANGE_HEADER,
        ORIGINAL_ROUTING_KEY_HEADER, TRACE_ID_HEADER, WORKER_HEADER_PREFIX,
        WORKER_TRACEPARENT_HEADER,
    };
}

/// SIGINT and SIGTERM.
pub mod shutdown {
    pub use crate::shutdown::signal;
}

/// Metrics, health, the HTTP endpoint, logging and trace propagation.
pub mod telemetry {
    pub use crate::telemetry::health::Health;
    pub use crate::telemetry::lag::{Taken, Unsettled};
    pub use crate::telemetry::metrics::{Metrics, QueueKind, TOP_GROUPS};
    pub use crate::telemetry::propagation::traceparent;
    pub use crate::telemetry::{logging, server};
}

/// W3C trace context.
pub mod trace_context {
    pub use crate::trace_context::{new_trace_id, parse_traceparent, TRACEPARENT_HEADER};
}

/// Entity versions: the table's migration.
pub mod versioning {
    pub use crate::versioning::migrations::COMPONENT;
    pub use crate::versioning::{applied_version, migrate};
}
