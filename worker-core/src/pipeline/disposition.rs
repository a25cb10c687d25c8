//! How the transport must settle a delivery.

use std::time::Duration;

use crate::dead_letter::record::DeadLetterRecord;
use crate::message::inbound::Properties;

/// A message the transport must publish (and see confirmed) before it acks the delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboundMessage {
    /// The body to publish.
    pub body: Vec<u8>,
    /// Its properties and headers.
    pub properties: Properties,
}

/// The pipeline's verdict on one delivery.
#[derive(Debug, Clone)]
pub enum Disposition {
    /// The handler succeeded and its writes (with the dedup row) are committed: ack.
    Processed,
    /// The dedup row already existed: the handler did not run. Ack.
    Duplicate,
    /// A retryable failure with attempts left: have the broker redeliver `message` to this
    /// handler after `delay`, as attempt `failures + 1`; wait until the broker has it (confirmed),
    /// then ack. How the broker holds the copy back is the transport's choice.
    Retry {
        /// The retry copy: the delivery with its attempt headers (count, first failure, last
        /// error, the producer's routing, the trace).
        message: OutboundMessage,
        /// How long the copy waits before it is delivered again.
        delay: Duration,
        /// Failed attempts so far, including this one: the copy is attempt `failures + 1`.
        failures: u32,
        /// The error of this attempt.
        error: String,
        /// The producer span of the publish; the copy carries its context.
        span: tracing::Span,
    },
    /// Poison, or attempts exhausted: publish `message` (the serialized `record`) to the handler's
    /// dead-letter queue, wait for the confirm, then ack.
    DeadLetter {
        /// The dead-letter message.
        message: OutboundMessage,
        /// The record it carries.
        record: Box<DeadLetterRecord>,
        /// The producer span of the publish; the message carries its context.
        span: tracing::Span,
    },
    /// A retry copy that arrived before the wait its handler asked for ended
    /// ([`HandlerError::retry_after`](crate::HandlerError::retry_after)): the handler did not run
    /// and no attempt is counted. Have the broker redeliver `message` (the same copy) after
    /// `delay`, confirmed, then ack, exactly as for [`Disposition::Retry`].
    Defer {
        /// The copy, unchanged but for its trace context.
        message: OutboundMessage,
        /// How long it still has to wait.
        delay: Duration,
        /// Failed attempts so far (unchanged).
        failures: u32,
        /// The producer span of the publish.
        span: tracing::Span,
    },
    /// Not the message's fault (the database could not even begin a transaction): give the
    /// delivery back to the broker without acking and without spending an attempt.
    GiveBack {
        /// Why.
        reason: String,
    },
}

impl Disposition {
    /// The producer span to enter while publishing, for retries and dead letters.
    pub fn publish_span(&self) -> Option<&tracing::Span> {
        match self {
            Disposition::Retry { span, .. }
            | Disposition::Defer { span, .. }
            | Disposition::DeadLetter { span, .. } => Some(span),
            _ => None,
        }
    }

    /// For a dead letter, whether it was poison or ran out of attempts.
    pub fn error_kind(&self) -> Option<crate::ErrorKind> {
        match self {
            Disposition::DeadLetter { record, .. } => Some(record.failure_metadata.error_kind),
            _ => None,
        }
    }

    /// A short, low-cardinality name: `ok`, `duplicate`, `retry`, `deferred`, `dead_letter`,
    /// `give_back`.
    pub fn outcome_name(&self) -> &'static str {
        match self {
            Disposition::Processed => "ok",
            Disposition::Duplicate => "duplicate",
            Disposition::Retry { .. } => "retry",
            Disposition::Defer { .. } => "deferred",
            Disposition::DeadLetter { .. } => "dead_letter",
            Disposition::GiveBack { .. } => "give_back",
        }
    }
}
