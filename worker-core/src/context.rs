//! What a handler knows about the delivery it is processing.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::message::headers::Headers;

/// The delivery's identity and history, handed to every handler call.
///
/// Use [`Context::event_id`] as the idempotency key for side effects outside the database (a
/// payment API, an e-mail provider): it is the same on every attempt and every redelivery.
#[derive(Debug, Clone)]
pub struct Context {
    pub(crate) event_id: String,
    pub(crate) event_type: String,
    pub(crate) handler: &'static str,
    pub(crate) attempt: u32,
    pub(crate) max_attempts: u32,
    pub(crate) first_failed_at: Option<DateTime<Utc>>,
    pub(crate) trace_id: String,
    pub(crate) correlation_id: Option<String>,
    pub(crate) redelivered: bool,
    pub(crate) headers: Headers,
    pub(crate) pool: PgPool,
}

impl Context {
    /// The event id (the message's `message_id` property), stable across attempts.
    pub fn event_id(&self) -> &str {
        &self.event_id
    }

    /// The event type (the `type` property, else the routing key).
    pub fn event_type(&self) -> &str {
        &self.event_type
    }

    /// The handler's name (its consumer group).
    pub fn handler(&self) -> &'static str {
        self.handler
    }

    /// Which attempt this is, starting at 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The attempts this handler gets in total.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// Whether this is the last attempt: a retryable failure now dead-letters the event.
    pub fn is_last_attempt(&self) -> bool {
        self.attempt >= self.max_attempts
    }

    /// When the first attempt failed, if one did.
    pub fn first_failed_at(&self) -> Option<DateTime<Utc>> {
        self.first_failed_at
    }

    /// The trace id of this event, the same on every attempt and in its dead-letter record.
    pub fn trace_id(&self) -> &str {
        &self.trace_id
    }

    /// The producer's `correlation_id`, passed through.
    pub fn correlation_id(&self) -> Option<&str> {
        self.correlation_id.as_deref()
    }

    /// Whether the broker delivered this message before (after a crash or a lost connection).
    pub fn redelivered(&self) -> bool {
        self.redelivered
    }

    /// The headers the producer sent (without the worker's own retry headers).
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The worker's connection pool, for handlers without `dedup` that still use the database.
    /// A `dedup` handler should write through the transaction it is given instead.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}
