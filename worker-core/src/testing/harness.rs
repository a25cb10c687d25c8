//! The harness: the worker's pipeline over in-memory queues and a virtual clock.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::message::TestMessage;
use super::outcome::{Delivery, Outcome};
use super::schedule::{Lane, Schedule, Waiting};
use crate::clock::{Clock, Jitter};
use crate::config::{ConfigError, WorkerConfig};
use crate::dead_letter::record::DeadLetterRecord;
use crate::dedup::store::DedupStore;
use crate::handler::policy::ErrorPolicies;
use crate::handler::{Handler, HandlerSpec};
use crate::message::inbound::{InboundMessage, Properties};
use crate::migrations::MigrationError;
use crate::observer::NoopObserver;
use crate::outbox::table::{OutboxRow, OutboxTable};
use crate::pipeline::disposition::Disposition;
use crate::pipeline::Runtime;
use crate::registry::{ErasedHandler, Registry, RegistryError};
use crate::retry::attempts::RetryState;
use crate::state::States;
use crate::transport::CoreSpans;
use crate::upcast::Upcasters;

/// How long a given-back delivery waits before it is delivered again (the pause a transport
/// takes before it gives a delivery back, so that an outage is no hot loop).
pub const GIVE_BACK_PAUSE: Duration = Duration::from_secs(1);

/// The exchange test messages are published to unless [`TestHarnessBuilder::exchange`] says
/// otherwise (the transport's default events exchange).
pub const DEFAULT_EXCHANGE: &str = "events";

/// Give-backs in one [`TestHarness::run_until_idle`] after which it stops waiting for the harness
/// to become idle.
pub const DEFAULT_GIVE_BACK_LIMIT: usize = 1000;

/// `time + by`, at most the latest time chrono represents (a test may `advance(Duration::MAX)`).
fn later(time: DateTime<Utc>, by: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(by)
        .ok()
        .and_then(|by| time.checked_add_signed(by))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Why a harness cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// No handler, two with one name, or a state type that was not given (as at a worker's
    /// start).
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A handler's configured retry policy or concurrency is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A `dedup` handler, but no pool to keep its dedup rows in.
    #[error("handler `{handler}` has `dedup`, which runs in a Postgres transaction: give the harness a pool with `.pool(pool)` (for example the one `#[sqlx::test]` passes to the test)")]
    PoolRequired {
        /// The handler.
        handler: &'static str,
    },
    /// The framework's tables (dedup, outbox, entity versions) could not be created.
    #[error("the test harness could not create the framework's tables: {0}")]
    Migration(#[from] MigrationError),
}

/// Builds a [`TestHarness`]: the handlers, their state, and optionally a pool.
#[must_use = "call .build().await to get the harness"]
pub struct TestHarnessBuilder {
    registry: Registry,
    states: States,
    pool: Option<PgPool>,
    config: WorkerConfig,
    exchange: String,
    seed: u64,
    start: Option<DateTime<Utc>>,
    give_back_limit: usize,
    error_policies: ErrorPolicies,
    upcasters: Upcasters,
}

impl std::fmt::Debug for TestHarnessBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestHarnessBuilder")
            .field("handlers", &self.registry)
            .field("states", &self.states)
            .field("pool", &self.pool.is_some())
            .field("exchange", &self.exchange)
            .field("seed", &self.seed)
            .finish_non_exhaustive()
    }
}

impl TestHarnessBuilder {
    /// Registers a handler (a function annotated with `#[handler]`), as a worker's builder does.
    pub fn handler<H: Handler>(mut self, handler: H) -> Self {
        self.registry.add(handler);
        self
    }

    /// Gives handlers application state (what a `State<T>` parameter receives), as a worker's
    /// builder does.
    pub fn state<T: Clone + Send + Sync + 'static>(mut self, value: T) -> Self {
        self.states.insert(value);
        self
    }

    /// What error types mean ([`ErrorPolicies`]), as a worker's builder takes them.
    pub fn error_policies(mut self, policies: ErrorPolicies) -> Self {
        self.error_policies = policies;
        self
    }

    /// How older versions of events become the versions handlers know ([`Upcasters`]), as a
    /// worker's builder takes them.
    pub fn upcasters(mut self, upcasters: Upcasters) -> Self {
        self.upcasters = upcasters;
        self
    }

    /// The database: `dedup` handlers claim their dedup row and run in a transaction on it,
    /// `ctx.pool()` returns it, and [`TestHarness::relay_outbox`] reads its outbox. The
    /// framework's tables are created in the configured schema (`public` by default, which is
    /// what a `#[sqlx::test]` pool uses). Without a pool, only handlers without `dedup` can run.
    pub fn pool(mut self, pool: PgPool) -> Self {
        self.pool = Some(pool);
        self
    }

    /// Configuration, as a worker takes it: the retry overrides and per-handler overrides, the
    /// schema of the framework's tables (`db_schema`), whether to create them (`migrate`), the
    /// `consumer` named in dead-letter records and the payload limit. Default:
    /// [`WorkerConfig::default`] (never the environment, so that a test means the same
    /// everywhere).
    pub fn config(mut self, config: WorkerConfig) -> Self {
        self.config = config;
        self
    }

    /// The exchange name test messages carry (and dead-letter records name); default
    /// [`DEFAULT_EXCHANGE`].
    pub fn exchange(mut self, exchange: impl Into<String>) -> Self {
        self.exchange = exchange.into();
        self
    }

    /// Seeds the retry jitter (default 0): the same seed gives the same delays.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Where the virtual clock starts (default: the real time when the harness is built, to the
    /// millisecond).
    pub fn start_at(mut self, start: DateTime<Utc>) -> Self {
        self.start = Some(start);
        self
    }

    /// Give-backs in one [`TestHarness::run_until_idle`] after which it panics, because a
    /// database that never comes back never lets the harness become idle (default
    /// [`DEFAULT_GIVE_BACK_LIMIT`]).
    pub fn give_back_limit(mut self, limit: usize) -> Self {
        self.give_back_limit = limit;
        self
    }

    /// Checks the handlers as a worker's start does (names, state, configuration), requires a
    /// pool for `dedup` handlers, and creates the framework's tables when there is a pool.
    pub async fn build(self) -> Result<TestHarness, HarnessError> {
        self.registry.validate()?;
        self.registry.check_states(&self.states)?;
        let handlers = self
            .registry
            .handlers()
            .iter()
            .map(|handler| Ok((Arc::clone(handler), self.config.resolve(&handler.spec())?)))
            .collect::<Result<Vec<(Arc<dyn ErasedHandler>, HandlerSpec)>, ConfigError>>()?;
        if self.pool.is_none() {
            if let Some((_, spec)) = handlers.iter().find(|(_, spec)| spec.dedup) {
                return Err(HarnessError::PoolRequired { handler: spec.name });
            }
        }
        let schema = self.config.db_schema.clone();
        if let (Some(pool), true) = (&self.pool, self.config.migrate) {
            crate::migrations::run_framework(pool, &schema).await?;
        }
        let mut routes: HashMap<&'static str, Vec<usize>> = HashMap::new();
        for (index, (_, spec)) in handlers.iter().enumerate() {
            routes.entry(spec.event_type).or_default().push(index);
        }
        // Whole milliseconds: the retry headers carry times to the millisecond, so a record's
        // `firstFailedAt` then equals the start exactly.
        let clock = Clock::manual(
            self.start
                .unwrap_or_else(|| chrono::SubsecRound::trunc_subsecs(Utc::now(), 3)),
        );
        let runtime = Runtime {
            pool: self.pool,
            dedup: DedupStore::new(schema.clone()),
            consumer: self.config.consumer.clone(),
            observer: Arc::new(NoopObserver),
            max_payload_bytes: self.config.max_payload_bytes,
            spans: Arc::new(CoreSpans),
            states: self.states,
            clock: clock.clone(),
            jitter: Jitter::seeded(self.seed),
            max_retry_after: self.config.max_retry_after,
            error_policies: self.error_policies,
            upcasters: self.upcasters,
        };
        Ok(TestHarness {
            handlers,
            routes,
            runtime,
            clock,
            exchange: self.exchange,
            outbox: OutboxTable::new(schema),
            schedule: Schedule::default(),
            deliveries: Vec::new(),
            give_back_limit: self.give_back_limit,
        })
    }
}

/// The worker's delivery pipeline without a broker: the same code decodes each delivery, claims
/// its dedup row in a real Postgres transaction, runs the handler, classifies the failure, draws
/// the retry delay and builds the dead-letter record; in-memory queues and a virtual clock
/// replace the broker and waiting. See the [module docs](super) for what it models and what not.
pub struct TestHarness {
    handlers: Vec<(Arc<dyn ErasedHandler>, HandlerSpec)>,
    /// Event type → the handlers bound to it.
    routes: HashMap<&'static str, Vec<usize>>,
    runtime: Runtime,
    clock: Clock,
    exchange: String,
    outbox: OutboxTable,
    schedule: Schedule,
    deliveries: Vec<Delivery>,
    give_back_limit: usize,
}

impl std::fmt::Debug for TestHarness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestHarness")
            .field(
                "handlers",
                &self
                    .handlers
                    .iter()
                    .map(|(_, s)| s.name)
                    .collect::<Vec<_>>(),
            )
            .field("now", &self.clock.now())
            .field("waiting", &self.schedule.len())
            .field("deliveries", &self.deliveries.len())
            .finish_non_exhaustive()
    }
}

impl TestHarness {
    /// A builder with no handlers, no state and no pool.
    pub fn builder() -> TestHarnessBuilder {
        Self::builder_from(Registry::new(), States::new())
    }

    /// A builder with these handlers and state: what a transport's worker builder hands over,
    /// so that a test runs exactly the handlers `main` registers (a transport's worker builder
    /// offers this as `test_harness()`).
    pub fn builder_from(registry: Registry, states: States) -> TestHarnessBuilder {
        TestHarnessBuilder {
            registry,
            states,
            pool: None,
            config: WorkerConfig::default(),
            exchange: DEFAULT_EXCHANGE.to_owned(),
            seed: 0,
            start: None,
            give_back_limit: DEFAULT_GIVE_BACK_LIMIT,
            error_policies: ErrorPolicies::default(),
            upcasters: Upcasters::default(),
        }
    }

    /// Publishes `message` to the events exchange: every handler bound to its event type gets
    /// a copy, due now. Returns how many handlers it was routed to (0: no handler takes it, and
    /// the message is dropped, as an unroutable message is).
    pub fn publish(&mut self, message: TestMessage) -> usize {
        let TestMessage {
            routing_key,
            body,
            properties,
        } = message;
        let inbound = InboundMessage {
            exchange: self.exchange.clone(),
            routing_key,
            redelivered: false,
            body,
            properties,
        };
        self.route(inbound)
    }

    fn route(&mut self, message: InboundMessage) -> usize {
        let Some(targets) = self.routes.get(message.routing_key.as_str()) else {
            return 0;
        };
        let targets = targets.clone();
        let now = self.clock.now();
        let mut message = Some(message);
        for (i, &handler) in targets.iter().enumerate() {
            let copy = if i + 1 == targets.len() {
                message.take().expect("the last target takes the message")
            } else {
                message.clone().expect("kept until the last target")
            };
            let lane = self.lane_of(handler, &copy);
            self.schedule.push(
                Waiting {
                    handler,
                    message: copy,
                    due: now,
                },
                lane,
            );
        }
        targets.len()
    }

    /// The partition lane of a partitioned handler's delivery: its entity's key. A delivery
    /// without a valid key is queued on its own (the pipeline dead-letters it as poison).
    fn lane_of(&self, handler: usize, message: &InboundMessage) -> Option<Lane> {
        let partitioning = self.handlers[handler].1.partition.as_ref()?;
        crate::partition::key_of(partitioning, message)
            .ok()
            .map(|key| (handler, key))
    }

    /// Moves the virtual clock forward by `by`, delivering everything that falls due on the way,
    /// in due order (a delivery sees the clock at its due time). Returns the deliveries made.
    pub async fn advance(&mut self, by: Duration) -> &[Delivery] {
        let target = later(self.clock.now(), by);
        let first = self.deliveries.len();
        while self.schedule.next_due().is_some_and(|due| due <= target) {
            self.step().await;
        }
        self.move_clock_to(target);
        &self.deliveries[first..]
    }

    /// Delivers until nothing waits, moving the virtual clock to each next due time (a retry
    /// after a 30 s backoff takes no wall time). Returns the deliveries made.
    ///
    /// # Panics
    ///
    /// After [`give_back_limit`](TestHarnessBuilder::give_back_limit) give-backs in this call: a
    /// database that never comes back never lets the harness become idle.
    pub async fn run_until_idle(&mut self) -> &[Delivery] {
        let first = self.deliveries.len();
        let limit = self.give_back_limit;
        let mut give_backs = 0;
        while self.schedule.next_due().is_some() {
            let delivery = self.step().await;
            if let Outcome::GivenBack { reason } = &delivery.outcome {
                give_backs += 1;
                if give_backs >= limit {
                    panic!(
                        "the test harness is not idle after {give_backs} give-backs (the last: `{}` gave back {:?}: {reason}); a delivery the \
                         database never takes is given back forever: use advance() to bound the time, or raise give_back_limit()",
                        delivery.handler, delivery.event_id
                    );
                }
            }
        }
        &self.deliveries[first..]
    }

    /// Delivers the next due message (moving the clock to its due time if it is later) and
    /// returns what happened; `None` when nothing waits.
    pub async fn deliver_next(&mut self) -> Option<&Delivery> {
        self.schedule.next_due()?;
        Some(self.step().await)
    }

    async fn step(&mut self) -> &Delivery {
        let (waiting, lane) = self
            .schedule
            .take()
            .expect("step is only called when a message waits");
        self.move_clock_to(waiting.due);
        let (handler, spec) = &self.handlers[waiting.handler];
        let disposition = handler.process(spec, &self.runtime, &waiting.message).await;
        let now = self.clock.now();
        let delivery_of = |outcome| Delivery {
            handler: spec.name,
            event_id: waiting.message.properties.message_id.clone(),
            attempt: RetryState::read(&waiting.message.properties.headers, spec.retry.max_attempts)
                .attempt(),
            at: now,
            outcome,
        };
        let (delivery, next) = match disposition {
            Disposition::Processed => (delivery_of(Outcome::Processed), None),
            Disposition::Duplicate => (delivery_of(Outcome::Duplicate), None),
            Disposition::DeadLetter { record, .. } => {
                (delivery_of(Outcome::DeadLettered(record)), None)
            }
            Disposition::Retry {
                message: copy,
                delay,
                failures,
                error,
                ..
            } => {
                // A copy with a wait asked for is due at its not-before time (written rounded
                // up to the millisecond), which the broker's delay queues never undercut.
                let not_before =
                    RetryState::read(&copy.properties.headers, crate::MOST_POLICY_ATTEMPTS)
                        .not_before;
                let at = later(now, delay).max(not_before.unwrap_or(DateTime::<Utc>::MIN_UTC));
                let delivery = delivery_of(Outcome::RetryScheduled {
                    attempt: failures + 1,
                    at,
                    delay,
                    error,
                });
                let message = match &lane {
                    // Retried in place, at the head of its partition.
                    Some(_) => crate::pipeline::in_place::next_attempt(&waiting.message, copy),
                    // Through the delay queue, which dead-letters the copy back to the work
                    // queue by the default exchange; the broker drops the copy's TTL on the way.
                    None => InboundMessage {
                        exchange: String::new(),
                        routing_key: spec.name.to_owned(),
                        redelivered: false,
                        body: copy.body,
                        properties: Properties {
                            expiration: None,
                            ..copy.properties
                        },
                    },
                };
                (delivery, Some((message, at)))
            }
            Disposition::Defer {
                message: copy,
                delay,
                ..
            } => {
                let at = later(now, delay);
                let message = InboundMessage {
                    properties: Properties {
                        expiration: None,
                        ..copy.properties
                    },
                    body: copy.body,
                    ..waiting.message.clone()
                };
                (delivery_of(Outcome::Deferred { at }), Some((message, at)))
            }
            Disposition::GiveBack { reason } => {
                let at = later(now, GIVE_BACK_PAUSE);
                let mut message = waiting.message.clone();
                message.redelivered = true;
                (
                    delivery_of(Outcome::GivenBack { reason }),
                    Some((message, at)),
                )
            }
        };
        match (next, lane) {
            (Some((message, due)), Some(lane)) => self.schedule.hold(
                lane,
                Waiting {
                    handler: waiting.handler,
                    message,
                    due,
                },
            ),
            (Some((message, due)), None) => self.schedule.push(
                Waiting {
                    handler: waiting.handler,
                    message,
                    due,
                },
                None,
            ),
            (None, Some(lane)) => self.schedule.finish(lane, now),
            (None, None) => {}
        }
        self.deliveries.push(delivery);
        self.deliveries.last().expect("just pushed")
    }

    fn move_clock_to(&self, time: DateTime<Utc>) {
        let now = self.clock.now();
        if let Ok(by) = (time - now).to_std() {
            self.clock.advance(by);
        }
    }

    /// Publishes, as the outbox relay would, every unpublished row of the outbox (what committed
    /// handlers enqueued), in id order, into the harness (routed by event type to the handlers
    /// that take it, with the relay's headers such as the partition key), marks them published
    /// and returns them. Without a pool there is no outbox: nothing is returned.
    pub async fn relay_outbox(&mut self) -> Result<Vec<OutboxRow>, sqlx::Error> {
        let Some(pool) = self.runtime.pool.clone() else {
            return Ok(Vec::new());
        };
        let mut tx = pool.begin().await?;
        let mut relayed = Vec::new();
        loop {
            let rows = self.outbox.claim(&mut tx, 1000).await?;
            if rows.is_empty() {
                break;
            }
            let ids: Vec<i64> = rows.iter().map(|row| row.id).collect();
            self.outbox.mark_published(&mut tx, &ids).await?;
            relayed.extend(rows);
        }
        tx.commit().await?;
        for row in &relayed {
            let message = row.message();
            self.route(InboundMessage {
                exchange: self.exchange.clone(),
                routing_key: row.event_type.clone(),
                redelivered: false,
                body: message.body,
                properties: message.properties,
            });
        }
        Ok(relayed)
    }

    /// Every delivery so far, in the order they were made.
    pub fn deliveries(&self) -> &[Delivery] {
        &self.deliveries
    }

    /// The outcomes of `handler`'s deliveries of event `event_id`, attempt by attempt.
    pub fn outcomes(&self, handler: &str, event_id: &str) -> Vec<&Outcome> {
        self.deliveries
            .iter()
            .filter(|d| d.handler == handler && d.event_id.as_deref() == Some(event_id))
            .map(|d| &d.outcome)
            .collect()
    }

    /// The records in `handler`'s dead-letter queue, oldest first.
    pub fn dead_letters(&self, handler: &str) -> Vec<&DeadLetterRecord> {
        self.deliveries
            .iter()
            .filter(|d| d.handler == handler)
            .filter_map(|d| d.outcome.dead_letter())
            .collect()
    }

    /// How many messages wait (first deliveries, retries and given-back deliveries).
    pub fn waiting(&self) -> usize {
        self.schedule.len()
    }

    /// When the next waiting message is due.
    pub fn next_due(&self) -> Option<DateTime<Utc>> {
        self.schedule.next_due()
    }

    /// The virtual time.
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// The pool the harness was given.
    pub fn pool(&self) -> Option<&PgPool> {
        self.runtime.pool.as_ref()
    }

    /// The spec `handler` runs with (its declaration with the configuration applied).
    pub fn spec(&self, handler: &str) -> Option<&HandlerSpec> {
        self.handlers
            .iter()
            .map(|(_, spec)| spec)
            .find(|spec| spec.name == handler)
    }
}
