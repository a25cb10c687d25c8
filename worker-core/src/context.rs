//! What a handler knows about the delivery it is processing.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::message::headers::{HeaderValue, Headers};
use crate::state::States;

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
    /// Whether the trace is sampled (the producer's W3C flag), for what the handler publishes.
    pub(crate) trace_sampled: bool,
    pub(crate) correlation_id: Option<String>,
    pub(crate) redelivered: bool,
    pub(crate) headers: Headers,
    /// Always `Some` in a worker; `None` only in a context built for a test without a pool.
    pub(crate) pool: Option<PgPool>,
    pub(crate) states: States,
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
    ///
    /// # Panics
    ///
    /// Only for a context built for a test ([`Context::builder`]) without
    /// [`pool`](ContextBuilder::pool); a worker always has a pool.
    pub fn pool(&self) -> &PgPool {
        self.pool.as_ref().expect(
            "this Context was built for a test without a pool: add `.pool(pool)` to Context::builder()",
        )
    }

    /// The application state of type `T` the worker was given, if any (what a `State<T>`
    /// parameter receives).
    pub fn state<T: 'static>(&self) -> Option<&T> {
        self.states.get::<T>()
    }

    pub(crate) fn states(&self) -> &States {
        &self.states
    }

    /// A context for calling a handler directly in a unit test: attempt 1 of 1 of event
    /// `evt_test` by handler `test`, a fresh trace id, no headers, no pool, no state. Set what the
    /// handler reads:
    ///
    /// ```
    /// use worker_core::Context;
    ///
    /// #[derive(Clone)]
    /// struct Gateway;
    ///
    /// let ctx = Context::builder()
    ///     .event_id("evt_1")
    ///     .handler("charge-on-order-placed")
    ///     .attempt(3)
    ///     .max_attempts(12)
    ///     .state(Gateway)
    ///     .build();
    /// assert_eq!(ctx.event_id(), "evt_1");
    /// assert_eq!(ctx.attempt(), 3);
    /// assert!(!ctx.is_last_attempt());
    /// assert!(ctx.state::<Gateway>().is_some());
    /// ```
    pub fn builder() -> ContextBuilder {
        ContextBuilder {
            ctx: Context {
                event_id: "evt_test".into(),
                event_type: "Test".into(),
                handler: "test",
                attempt: 1,
                max_attempts: 1,
                first_failed_at: None,
                trace_id: crate::trace_context::new_trace_id(),
                trace_sampled: true,
                correlation_id: None,
                redelivered: false,
                headers: Headers::new(),
                pool: None,
                states: States::new(),
            },
        }
    }
}

/// Builds a [`Context`] for a unit test; see [`Context::builder`].
#[derive(Debug, Clone)]
#[must_use = "call `.build()` to get the Context"]
pub struct ContextBuilder {
    ctx: Context,
}

impl ContextBuilder {
    /// The event id.
    pub fn event_id(mut self, id: impl Into<String>) -> Self {
        self.ctx.event_id = id.into();
        self
    }

    /// The event type.
    pub fn event_type(mut self, event_type: impl Into<String>) -> Self {
        self.ctx.event_type = event_type.into();
        self
    }

    /// The handler's name.
    pub fn handler(mut self, name: &'static str) -> Self {
        self.ctx.handler = name;
        self
    }

    /// Which attempt this is (1-based); `max_attempts` is raised to it if lower.
    pub fn attempt(mut self, attempt: u32) -> Self {
        self.ctx.attempt = attempt.max(1);
        self.ctx.max_attempts = self.ctx.max_attempts.max(self.ctx.attempt);
        self
    }

    /// The attempts in total.
    pub fn max_attempts(mut self, max_attempts: u32) -> Self {
        self.ctx.max_attempts = max_attempts.max(1);
        self
    }

    /// When the first attempt failed.
    pub fn first_failed_at(mut self, at: DateTime<Utc>) -> Self {
        self.ctx.first_failed_at = Some(at);
        self
    }

    /// The trace id (32 lowercase hex digits in a worker).
    pub fn trace_id(mut self, trace_id: impl Into<String>) -> Self {
        self.ctx.trace_id = trace_id.into();
        self
    }

    /// The producer's correlation id.
    pub fn correlation_id(mut self, id: impl Into<String>) -> Self {
        self.ctx.correlation_id = Some(id.into());
        self
    }

    /// Whether the broker delivered the message before.
    pub fn redelivered(mut self, redelivered: bool) -> Self {
        self.ctx.redelivered = redelivered;
        self
    }

    /// A header the producer sent.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<HeaderValue>) -> Self {
        self.ctx.headers.insert(name.into(), value.into());
        self
    }

    /// The pool [`Context::pool`] returns.
    pub fn pool(mut self, pool: PgPool) -> Self {
        self.ctx.pool = Some(pool);
        self
    }

    /// Application state, as a worker's builder takes it (one value per type).
    pub fn state<T: Clone + Send + Sync + 'static>(mut self, value: T) -> Self {
        self.ctx.states.insert(value);
        self
    }

    /// The context.
    pub fn build(self) -> Context {
        self.ctx
    }
}
