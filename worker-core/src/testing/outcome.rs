//! What the harness saw happen to each delivery.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::dead_letter::record::DeadLetterRecord;

/// How one delivery ended, as the transport would carry it out.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The handler succeeded (and, with `dedup`, its transaction committed): acked.
    Processed,
    /// The dedup row existed: the handler did not run. Acked.
    Duplicate,
    /// A retryable failure with attempts left: the event comes back at `at` as `attempt`.
    RetryScheduled {
        /// The attempt the redelivery will be (2 after the first failure).
        attempt: u32,
        /// When it is due (the delivery's time plus `delay`).
        at: DateTime<Utc>,
        /// The backoff drawn for it (exponential, capped, plus the seeded jitter).
        delay: Duration,
        /// The error of the attempt that failed.
        error: String,
    },
    /// Poison, or attempts exhausted: this record went to the handler's dead-letter queue.
    DeadLettered(Box<DeadLetterRecord>),
    /// A retry copy delivered before the wait its handler asked for
    /// ([`HandlerError::retry_after`](crate::HandlerError::retry_after)) ended: parked again
    /// until `at`, without running the handler or counting an attempt.
    Deferred {
        /// When it is due.
        at: DateTime<Utc>,
    },
    /// Not the message's fault (the database could not begin a transaction): given back
    /// without spending an attempt, redelivered after a pause.
    GivenBack {
        /// Why.
        reason: String,
    },
}

impl Outcome {
    /// The dead-letter record, for [`Outcome::DeadLettered`].
    pub fn dead_letter(&self) -> Option<&DeadLetterRecord> {
        match self {
            Outcome::DeadLettered(record) => Some(record),
            _ => None,
        }
    }

    /// A short name: `processed`, `duplicate`, `retry`, `deferred`, `dead_letter`, `given_back`.
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Processed => "processed",
            Outcome::Duplicate => "duplicate",
            Outcome::RetryScheduled { .. } => "retry",
            Outcome::Deferred { .. } => "deferred",
            Outcome::DeadLettered(_) => "dead_letter",
            Outcome::GivenBack { .. } => "given_back",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::RetryScheduled {
                attempt,
                delay,
                error,
                ..
            } => write!(f, "retry as attempt {attempt} in {delay:?} after: {error}"),
            Outcome::DeadLettered(record) => write!(
                f,
                "dead-lettered ({}, after {} attempts): {}",
                record.failure_metadata.error_kind,
                record.failure_metadata.attempts,
                record.failure_metadata.last_error
            ),
            Outcome::GivenBack { reason } => write!(f, "given back: {reason}"),
            Outcome::Deferred { at } => write!(f, "deferred until {at}"),
            other => f.write_str(other.name()),
        }
    }
}

/// One delivery the harness made: which handler, which event and attempt, when, and how it
/// ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// The handler it was delivered to.
    pub handler: &'static str,
    /// Its `message_id`, if it had one.
    pub event_id: Option<String>,
    /// The attempt it was (1 for the first delivery, from the retry headers after that).
    pub attempt: u32,
    /// The virtual time it was processed at.
    pub at: DateTime<Utc>,
    /// How it ended.
    pub outcome: Outcome,
}
