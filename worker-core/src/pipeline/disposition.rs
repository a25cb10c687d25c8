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
    /// A retryable failure with attempts left: publish `message` to delay level `level` of this
    /// handler (it carries its delay as the per-message TTL), wait for the confirm, then ack.
    Retry {
        /// The retry copy.
        message: OutboundMessage,
        /// The delay level (1-based), see [`crate::RetryPolicy::level`].
        level: u32,
        /// The delay the copy waits in the delay queue.
        delay: Duration,
        /// Failed attempts so far, including this one.
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
            Disposition::Retry { span, .. } | Disposition::DeadLetter { span, .. } => Some(span),
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

    /// A short, low-cardinality name: `ok`, `duplicate`, `retry`, `dead_letter`, `give_back`.
    pub fn outcome_name(&self) -> &'static str {
        match self {
            Disposition::Processed => "ok",
            Disposition::Duplicate => "duplicate",
            Disposition::Retry { .. } => "retry",
            Disposition::DeadLetter { .. } => "dead_letter",
            Disposition::GiveBack { .. } => "give_back",
        }
    }
}
