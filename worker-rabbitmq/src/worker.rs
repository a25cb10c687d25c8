//! The worker: build it from handlers, start it, stop it gracefully.

use std::sync::Arc;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use worker_core::transport::breaker::Breaker;
use worker_core::transport::config::redact_url;
use worker_core::transport::dead_letter::DeadLetterStore;
use worker_core::transport::dedup::DedupStore;
use worker_core::transport::observer::Observers;
use worker_core::transport::pipeline::{Clock, Jitter, Runtime, States};
use worker_core::transport::registry::Registry;
use worker_core::transport::telemetry::server::{self, Endpoint};
use worker_core::transport::telemetry::Metrics;
use worker_core::transport::telemetry::{Health, Unsettled};
use worker_core::{
    ErrorPolicies, ErrorPolicy, Handler, HandlerSpec, Observer, Upcasters, WorkerConfig,
};

use crate::consume::{Plan, Source};
use crate::error::WorkerError;
use crate::runner::Stop;
use crate::session::{self, Blueprint, Leftovers, Served};
use crate::settings::{BrokerSettings, Settings};
use crate::topology::{self, QueueNames};

/// How often old dedup rows are pruned.
const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);

/// Entry point: `Worker::builder().handler(my_handler).run().await`.
#[derive(Debug)]
pub struct Worker;

impl Worker {
    /// A builder with no handlers and configuration from the environment.
    pub fn builder() -> WorkerBuilder {
        WorkerBuilder {
            registry: Registry::new(),
            settings: None,
            migrator: None,
            observers: Vec::new(),
            demo: None,
            outbox: None,
            states: States::new(),
            error_policies: ErrorPolicies::new(),
            upcasters: Upcasters::new(),
        }
    }
}

/// Collects handlers and settings, then starts the worker.
pub struct WorkerBuilder {
    registry: Registry,
    /// `None`: read from the environment at start.
    settings: Option<Settings>,
    migrator: Option<Migrator>,
    observers: Vec<Arc<dyn Observer>>,
    demo: Option<crate::demo::DemoHook>,
    /// The outbox relay: `None` not asked for, `Some(None)` settings from the environment.
    outbox: Option<Option<worker_core::OutboxSettings>>,
    /// The application state handlers take as `State<T>`.
    states: States,
    /// What error types mean ([`ErrorPolicies`]).
    error_policies: ErrorPolicies,
    /// How older event versions become the handlers' ([`Upcasters`]).
    upcasters: Upcasters,
}

impl std::fmt::Debug for WorkerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerBuilder")
            .field("handlers", &self.registry)
            .field("settings", &self.settings)
            .field("states", &self.states)
            .finish_non_exhaustive()
    }
}

impl WorkerBuilder {
    /// Registers a handler (a function annotated with `#[handler]`).
    pub fn handler<H: Handler>(mut self, handler: H) -> Self {
        self.registry.add(handler);
        self
    }

    /// Gives handlers application state: a handler parameter `State<T>` receives a clone of
    /// `value` for every delivery (one value per type; a second value of a type replaces the
    /// first). The worker refuses to start when a handler takes a `State<T>` it was not given.
    ///
    /// ```no_run
    /// # use worker_rabbitmq::{handler, HandlerError, State, Worker};
    /// #[derive(Clone)]
    /// struct Gateway { base_url: String }
    ///
    /// # #[derive(serde::Deserialize)] struct OrderPlaced {}
    /// #[handler(event = "OrderPlaced")]
    /// async fn charge(_event: OrderPlaced, State(gateway): State<Gateway>) -> Result<(), HandlerError> {
    ///     # let _ = gateway.base_url;
    ///     Ok(())
    /// }
    ///
    /// # async fn run() -> std::process::ExitCode {
    /// Worker::builder()
    ///     .state(Gateway { base_url: "https://pay.example".into() })
    ///     .handler(charge)
    ///     .run()
    ///     .await
    /// # }
    /// ```
    pub fn state<T: Clone + Send + Sync + 'static>(mut self, value: T) -> Self {
        self.states.insert(value);
        self
    }

    /// A [test harness](crate::testing) with this builder's handlers and state, and its
    /// configuration when it was given in code ([`WorkerBuilder::config`] or
    /// [`WorkerBuilder::settings`]; never the environment): a test then runs exactly the
    /// handlers `main` runs. Add `.state(..)` to replace a state value with a test double and
    /// `.pool(pool)` for `dedup` handlers. Migrations, observers, the outbox relay and the demo
    /// are the worker's and not part of the harness.
    ///
    /// ```
    /// # use worker_rabbitmq::{handler, HandlerError, Worker};
    /// # use worker_rabbitmq::testing::{Outcome, TestMessage};
    /// # #[derive(serde::Deserialize)] struct OrderPlaced {}
    /// #[handler(event = "OrderPlaced")]
    /// async fn audit(_event: OrderPlaced) -> Result<(), HandlerError> {
    ///     Ok(())
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let worker = Worker::builder().handler(audit);
    /// let mut harness = worker.test_harness().build().await.unwrap();
    /// harness.publish(TestMessage::json("OrderPlaced", "evt_1", &serde_json::json!({})));
    /// harness.run_until_idle().await;
    /// assert_eq!(harness.outcomes("audit", "evt_1"), [&Outcome::Processed]);
    /// # }
    /// ```
    pub fn test_harness(self) -> crate::testing::TestHarnessBuilder {
        let harness = crate::testing::TestHarness::builder_from(self.registry, self.states)
            .error_policies(self.error_policies)
            .upcasters(self.upcasters);
        match self.settings {
            Some(settings) => harness.config(settings.worker),
            None => harness,
        }
    }

    /// Says what failures with the error type `E` mean, in every handler: `classify` sees each
    /// such error (found anywhere in the handler error's source chain) and returns an
    /// [`ErrorPolicy`] (poison, retryable, retry after a wait, or a retry schedule of its own),
    /// or `None` for no change. An error a handler marked poison in code stays poison. See
    /// [`ErrorPolicies::on`] for the order policies are asked in.
    ///
    /// ```
    /// use std::time::Duration;
    /// use worker_rabbitmq::{ErrorPolicy, RetryPolicy, Worker};
    ///
    /// #[derive(Debug, thiserror::Error)]
    /// #[error("the API answered 429; retry after {0:?}")]
    /// struct RateLimited(Duration);
    ///
    /// #[derive(Debug, thiserror::Error)]
    /// #[error("the card was declined")]
    /// struct CardDeclined;
    ///
    /// let worker = Worker::builder()
    ///     .on_error(|e: &RateLimited| Some(ErrorPolicy::RetryAfter(e.0)))
    ///     .on_error(|_: &CardDeclined| Some(ErrorPolicy::Poison))
    ///     .on_error_in("sync-inventory", |_: &std::io::Error| {
    ///         Some(ErrorPolicy::Retry(RetryPolicy { max_attempts: 20, ..RetryPolicy::DEFAULT }))
    ///     });
    /// # drop(worker);
    /// ```
    pub fn on_error<E: std::error::Error + 'static>(
        mut self,
        classify: impl Fn(&E) -> Option<ErrorPolicy> + Send + Sync + 'static,
    ) -> Self {
        self.error_policies = self.error_policies.on(classify);
        self
    }

    /// Like [`WorkerBuilder::on_error`], for the handler named `handler` only (asked before the
    /// policies for every handler).
    pub fn on_error_in<E: std::error::Error + 'static>(
        mut self,
        handler: &str,
        classify: impl Fn(&E) -> Option<ErrorPolicy> + Send + Sync + 'static,
    ) -> Self {
        self.error_policies = self.error_policies.for_handler(handler, classify);
        self
    }

    /// Registers the upcaster that turns version `from` of `event_type` into version `from + 1`
    /// (see [`Upcasters`]): a handler declared with `#[handler(event = ..., version = N)]` gets
    /// older events brought to version N through the chain of steps before they are decoded.
    /// An `Err` from a step, a missing step, or an event newer than N is dead-lettered as poison
    /// with a reason that says which.
    ///
    /// ```
    /// use serde_json::{json, Value};
    /// use worker_rabbitmq::Worker;
    ///
    /// let worker = Worker::builder()
    ///     .upcast("OrderPlaced", 1, |mut v: Value| {
    ///         v["currency"] = json!("EUR");
    ///         Ok::<_, std::convert::Infallible>(v)
    ///     });
    /// # drop(worker);
    /// ```
    ///
    /// # Panics
    ///
    /// If a step from `from` is already registered for `event_type`, or `from` is 0.
    pub fn upcast<F, E>(mut self, event_type: &str, from: u32, step: F) -> Self
    where
        F: Fn(serde_json::Value) -> Result<serde_json::Value, E> + Send + Sync + 'static,
        E: std::fmt::Display,
    {
        self.upcasters = self.upcasters.upcast(event_type, from, step);
        self
    }

    /// Uses these settings instead of reading the environment.
    pub fn settings(mut self, settings: Settings) -> Self {
        self.settings = Some(settings);
        self
    }

    /// Uses this core configuration instead of reading the environment; the parts not given in
    /// code (see [`WorkerBuilder::broker`]) keep their defaults.
    pub fn config(mut self, config: WorkerConfig) -> Self {
        self.settings.get_or_insert_with(Settings::default).worker = config;
        self
    }

    /// Uses these broker settings instead of reading the environment; the parts not given in
    /// code (see [`WorkerBuilder::config`]) keep their defaults.
    pub fn broker(mut self, broker: BrokerSettings) -> Self {
        self.settings.get_or_insert_with(Settings::default).broker = broker;
        self
    }

    /// Runs the application's own migrations (e.g. `sqlx::migrate!()`) at start-up, after the
    /// dedup table's, in the configured schema. Skipped when migrations are turned off.
    pub fn migrations(mut self, migrator: Migrator) -> Self {
        self.migrator = Some(migrator);
        self
    }

    /// Adds hooks for telemetry or fault injection (called after the built-in metrics).
    pub fn observer(mut self, observer: impl Observer) -> Self {
        self.observers.push(Arc::new(observer));
        self
    }

    /// Runs the outbox relay (see [`crate::relay`]) in this worker, with the outbox part of the
    /// settings (the `WORKER_OUTBOX_*` variables when they come from the environment;
    ///  (`WORKER_OUTBOX=false` turns it off again, e.g. when relays
    /// run as their own processes).
    pub fn outbox(mut self) -> Self {
        self.outbox = Some(None);
        self
    }

    /// Runs the outbox relay in this worker with these settings.
    pub fn outbox_settings(mut self, settings: worker_core::OutboxSettings) -> Self {
        self.outbox = Some(Some(settings));
        self
    }

    /// Starts, then runs until SIGINT or SIGTERM and stops gracefully. A second signal during
    /// the graceful stop gives back every unfinished delivery at once.
    ///
    /// Installs the log and trace pipeline first (see
    /// [`worker_core::transport::telemetry::logging`]) unless the application installed a
    /// subscriber.
    pub async fn serve(mut self) -> Result<(), WorkerError> {
        let settings = match self.settings.take() {
            Some(settings) => settings,
            None => Settings::from_env()?,
        };
        let _telemetry = worker_core::transport::telemetry::logging::init_with_default(
            &settings.worker.consumer,
            crate::spans::DEFAULT_LOG_FILTER,
        );
        self.settings = Some(settings);
        let mut worker = self.start().await?;
        tokio::select! {
            _ = worker_core::transport::shutdown::signal() => {}
            result = worker.failed() => {
                worker.shutdown().await?;
                return result;
            }
        }
        let abandon = worker.stop.abandon.clone();
        tokio::spawn(async move {
            worker_core::transport::shutdown::signal().await;
            tracing::warn!("second signal: giving back unfinished deliveries now");
            abandon.cancel();
        });
        worker.shutdown().await
    }

    /// Connects, migrates, declares the topology and starts consuming; returns once every
    /// handler's consumer is running.
    pub async fn start(self) -> Result<RunningWorker, WorkerError> {
        self.registry.validate()?;
        self.registry.check_states(&self.states)?;
        let settings = match self.settings {
            Some(settings) => settings,
            None => Settings::from_env()?,
        };
        let specs = resolve_specs(&self.registry, &settings)?;
        let outbox = crate::relay::resolve(self.outbox, &settings);
        let Settings {
            worker: config,
            broker,
            ..
        } = settings;
        if let Some(longest) = specs
            .iter()
            .filter(|s| s.dedup)
            .max_by_key(|s| s.retry_horizon())
        {
            if config.dedup_retention <= longest.retry_horizon() {
                return Err(WorkerError::RetentionTooShort {
                    retention: config.dedup_retention,
                    horizon: longest.retry_horizon(),
                    handler: longest.name.into(),
                });
            }
        }

        let metrics = Arc::new(Metrics::new());
        let health = Arc::new(Health::for_broker("RabbitMQ"));
        health.expect_consumers(specs.len());
        let endpoint = match config.metrics_addr {
            Some(addr) => Some(
                server::serve(addr, Arc::clone(&metrics), Arc::clone(&health))
                    .await
                    .map_err(|source| WorkerError::MetricsEndpoint { addr, source })?,
            ),
            None => None,
        };
        let pool = connect_database(&config, &specs).await?;
        health.set_pool(pool.clone());
        let dedup = DedupStore::new(config.db_schema.clone());
        if config.migrate {
            worker_core::transport::migrations::run_framework(&pool, &config.db_schema)
                .await
                .map_err(|e| WorkerError::Migration(e.to_string()))?;
            if let Some(migrator) = &self.migrator {
                migrator
                    .run(&pool)
                    .await
                    .map_err(|e| WorkerError::Migration(e.to_string()))?;
            }
        }
        let dead_letter_store = match config.dlq_store {
            true => {
                let store = DeadLetterStore::new(config.db_schema.clone());
                if config.migrate {
                    store
                        .migrate(&pool)
                        .await
                        .map_err(|e| WorkerError::Migration(e.to_string()))?;
                }
                Some(store)
            }
            false => None,
        };

        let names: Vec<QueueNames> = specs
            .iter()
            .map(|spec| QueueNames::new(&broker, spec.name))
            .collect();
        let dead_letter_queues: Vec<(String, String)> = specs
            .iter()
            .zip(&names)
            .map(|(spec, names)| (spec.name.to_owned(), names.dlq.clone()))
            .collect();
        let runtime = Runtime {
            pool: Some(pool.clone()),
            dedup: dedup.clone(),
            consumer: config.consumer.clone(),
            max_payload_bytes: config.max_payload_bytes,
            spans: Arc::new(crate::spans::RabbitSpans),
            states: self.states,
            clock: Clock::system(),
            jitter: Jitter::random(),
            max_retry_after: config.max_retry_after,
            error_policies: self.error_policies,
            upcasters: self.upcasters,
            observer: Arc::new(Observers(
                std::iter::once(Arc::clone(&metrics) as Arc<dyn Observer>)
                    .chain(self.observers)
                    .collect(),
            )),
        };
        let stop = Stop {
            consuming: CancellationToken::new(),
            abandon: CancellationToken::new(),
            tasks: TaskTracker::new(),
        };
        let handlers = self
            .registry
            .handlers()
            .iter()
            .cloned()
            .zip(specs)
            .zip(names)
            .map(|((handler, spec), names)| {
                let breaker = Arc::new(Breaker::new(spec.name, spec.breaker, {
                    let (metrics, name) = (Arc::clone(&metrics), spec.name);
                    move |state| metrics.set_breaker_state(name, state)
                }));
                health.watch_breaker(Arc::clone(&breaker));
                let unsettled = Unsettled::new(spec.name);
                metrics.track_lag(Arc::clone(&unsettled));
                Served {
                    handler,
                    spec,
                    names,
                    breaker,
                    unsettled,
                }
            })
            .collect();
        let blueprint = Blueprint {
            handlers,
            config: config.clone(),
            broker: broker.clone(),
            runtime,
            stop: stop.clone(),
            health: Arc::clone(&health),
            metrics: Arc::clone(&metrics),
        };
        let session = blueprint.open().await?;
        let supervisor = tokio::spawn(session::supervise(blueprint, session));
        let pruner = tokio::spawn(prune_forever(pool.clone(), dedup, config.dedup_retention));
        let relay = outbox.map(|settings| {
            let observer = Arc::clone(&metrics) as Arc<dyn worker_core::RelayObserver>;
            crate::relay::spawn(pool.clone(), &config, &broker, settings, observer)
        });
        let ingester = dead_letter_store.map(|store| {
            crate::dlq::ingest::spawn(
                pool.clone(),
                store,
                broker.clone(),
                config.consumer.clone(),
                dead_letter_queues,
                config.dlq_store_retention,
                Arc::clone(&metrics),
            )
        });
        tracing::info!(
            app = %config.app,
            amqp = %redact_url(&broker.url),
            database = %redact_url(&config.database_url),
            schema = %config.db_schema,
            queue_prefix = %broker.queue_prefix,
            handlers = ?self.registry,
            "worker started"
        );
        Ok(RunningWorker {
            stop,
            supervisor: Some(supervisor),
            pool,
            pruner,
            relay,
            ingester,
            endpoint,
            health,
            shutdown_timeout: config.shutdown_timeout,
        })
    }
}

/// The specs the handlers run with under `settings`, with every name checked (see
/// [`check_names`]); warns about `WORKER_HANDLER_<NAME>_*` variables that name no handler.
pub(crate) fn resolve_specs(
    registry: &Registry,
    settings: &Settings,
) -> Result<Vec<HandlerSpec>, WorkerError> {
    let specs = registry
        .handlers()
        .iter()
        .map(|h| settings.worker.resolve(&h.spec()))
        .collect::<Result<Vec<_>, _>>()?;
    check_names(settings, &specs)?;
    let names: Vec<&str> = specs.iter().map(|s| s.name).collect();
    for unknown in settings.worker.unknown_handler_vars(&names) {
        tracing::warn!(
            variables = %unknown,
            handlers = ?names,
            "these variables name no handler of this worker and are ignored"
        );
    }
    Ok(specs)
}

/// Checks that every name the worker hands the broker fits an AMQP short string (255 bytes): the
/// topology's (see [`topology::check_names`]) and the session's consumer tags. lapin panics on a
/// longer one, so a long prefix or consumer name fails here, before connecting.
pub(crate) fn check_names(settings: &Settings, specs: &[HandlerSpec]) -> Result<(), WorkerError> {
    topology::check_names(&settings.broker, specs)?;
    for spec in specs {
        let names = QueueNames::new(&settings.broker, spec.name);
        for source in Source::of(&settings.broker, spec) {
            let plan = Plan::new(source, &settings.worker, spec, &names);
            WorkerError::check_name("consumer tag", &plan.tag)?;
        }
    }
    Ok(())
}

/// The worker's pool: large enough that every delivery in flight can hold its transaction.
async fn connect_database(
    config: &WorkerConfig,
    specs: &[worker_core::HandlerSpec],
) -> Result<PgPool, WorkerError> {
    // Every in-flight delivery may hold its transaction and use one more connection through
    // `ctx.pool()` (a handler writing outside its transaction); with fewer connections than that,
    // deliveries holding transactions could wait on each other for the pool. Plus the pruner's.
    let wanted: usize = specs
        .iter()
        .map(|s| {
            if s.dedup {
                2 * s.concurrency
            } else {
                s.concurrency
            }
        })
        .sum::<usize>()
        + 2;
    let size = config
        .db_pool_size
        .max(1)
        .min(u32::try_from(wanted).unwrap_or(u32::MAX))
        .max(2);
    crate::database::connect(config, size).await
}

async fn prune_forever(pool: PgPool, dedup: DedupStore, retention: Duration) {
    let mut interval = tokio::time::interval(PRUNE_INTERVAL);
    loop {
        interval.tick().await;
        loop {
            match dedup.prune(&pool, retention).await {
                Ok(0) => break,
                Ok(n) => tracing::info!(rows = n, "pruned old dedup rows"),
                Err(error) => {
                    tracing::warn!(%error, "pruning dedup rows failed; will try again");
                    break;
                }
            }
        }
    }
}

/// How long a stopping worker waits between its last acks and closing its channels.
const ACKS_LAND: Duration = Duration::from_millis(250);

/// A started worker. Stop it with [`RunningWorker::shutdown`].
#[derive(Debug)]
pub struct RunningWorker {
    stop: Stop,
    supervisor: Option<tokio::task::JoinHandle<Leftovers>>,
    pool: PgPool,
    pruner: tokio::task::JoinHandle<()>,
    relay: Option<crate::relay::RunningRelay>,
    ingester: Option<crate::dlq::ingest::RunningIngester>,
    endpoint: Option<Endpoint>,
    health: Arc<Health>,
    shutdown_timeout: Duration,
}

impl RunningWorker {
    /// Resolves only if consuming stopped for good without a stop request (the supervisor that
    /// reconnects after a lost connection ended); a lost connection alone does not resolve it.
    pub async fn failed(&mut self) -> Result<(), WorkerError> {
        let Some(supervisor) = self.supervisor.as_mut() else {
            return std::future::pending().await;
        };
        let reason = match supervisor.await {
            Ok(_) => "the connection supervisor stopped".to_owned(),
            Err(error) => format!("the connection supervisor failed: {error}"),
        };
        self.supervisor = None;
        Err(WorkerError::ConsumerLost {
            queue: "*".into(),
            reason,
        })
    }

    /// Stops gracefully: stop consuming, let in-flight deliveries finish within the shutdown
    /// timeout, give back (nack) the ones that do not, then close the channels, the connection and
    /// the pool. Nothing that did not finish is acked.
    pub async fn shutdown(mut self) -> Result<(), WorkerError> {
        self.stop.consuming.cancel();
        let leftovers = match self.supervisor.take() {
            Some(supervisor) => supervisor.await.unwrap_or(Leftovers {
                channels: Vec::new(),
                connection: None,
            }),
            None => Leftovers {
                channels: Vec::new(),
                connection: None,
            },
        };
        self.stop.tasks.close();
        if tokio::time::timeout(self.shutdown_timeout, self.stop.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(timeout = ?self.shutdown_timeout, "in-flight deliveries did not finish in time: giving them back");
            self.stop.abandon.cancel();
            self.stop.tasks.wait().await;
        }
        if !leftovers.channels.is_empty() {
            // A quorum queue may ignore acks that arrive just before their channel closes and
            // requeue those deliveries (rabbitmq-server#10327): give the last acks time to land.
            tokio::time::sleep(ACKS_LAND).await;
        }
        for channel in leftovers.channels {
            let _ = channel.close(200, "worker stopping".into()).await;
        }
        if let Some(connection) = leftovers.connection {
            let _ = connection.close(200, "worker stopping".into()).await;
        }
        if let Some(relay) = self.relay.take() {
            relay.shutdown().await;
        }
        if let Some(ingester) = self.ingester.take() {
            ingester.shutdown().await;
        }
        self.pruner.abort();
        self.health.set_broker_connected(false);
        if let Some(endpoint) = &self.endpoint {
            endpoint.stop();
        }
        self.pool.close().await;
        tracing::info!("worker stopped");
        Ok(())
    }

    /// Where `/metrics`, `/healthz` and `/readyz` are served, when the endpoint is on.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.endpoint.as_ref().map(|e| e.addr)
    }

    /// A handle that makes a running [`shutdown`](Self::shutdown) give back unfinished deliveries
    /// immediately (as a second SIGINT does).
    pub fn abandon_token(&self) -> CancellationToken {
        self.stop.abandon.clone()
    }
}

/// The demo burst (see [`crate::demo`]) and what the command line reads.
impl WorkerBuilder {
    /// Registers the application's demo burst, published by the `demo` subcommand and by
    /// `run --demo` (see [`crate::demo`]).
    pub fn demo<F>(mut self, demo: F) -> Self
    where
        F: Fn(
                crate::demo::DemoPublisher,
            )
                -> worker_core::BoxFuture<'static, Result<String, crate::demo::DemoError>>
            + Send
            + Sync
            + 'static,
    {
        self.demo = Some(Arc::new(demo));
        self
    }

    pub(crate) fn cli_parts(
        &self,
    ) -> (&Registry, Option<&Settings>, Option<&crate::demo::DemoHook>) {
        (&self.registry, self.settings.as_ref(), self.demo.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use worker_core::{HandlerSpec, WorkerConfig};

    use super::check_names;
    use crate::error::WorkerError;
    use crate::settings::{BrokerSettings, Settings};

    #[test]
    fn names_over_255_bytes_are_refused_before_connecting() {
        let spec = HandlerSpec::new("charge-on-order-placed", "OrderPlaced");
        let settings = Settings::default();
        assert!(check_names(&settings, std::slice::from_ref(&spec)).is_ok());

        let long_prefix = Settings {
            broker: BrokerSettings {
                queue_prefix: "p".repeat(240),
                ..BrokerSettings::default()
            },
            ..Settings::default()
        };
        let error = check_names(&long_prefix, std::slice::from_ref(&spec)).expect_err("too long");
        assert!(
            matches!(&error, WorkerError::NameTooLong(too_long) if too_long.len > 255),
            "{error}"
        );
        assert!(error.to_string().contains("WORKER_QUEUE_PREFIX"), "{error}");

        // The consumer tag is the consumer name, the handler name and the pid.
        let long_consumer = Settings {
            worker: WorkerConfig {
                consumer: "c".repeat(230),
                ..WorkerConfig::default()
            },
            ..Settings::default()
        };
        let error = check_names(&long_consumer, &[spec]).expect_err("too long");
        assert!(error.to_string().contains("consumer tag"), "{error}");

        let long_exchange = Settings {
            broker: BrokerSettings {
                exchange: "e".repeat(256),
                ..BrokerSettings::default()
            },
            ..Settings::default()
        };
        assert!(check_names(&long_exchange, &[]).is_err());
    }
}
