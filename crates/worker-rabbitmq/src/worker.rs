//! The worker: build it from handlers, start it, stop it gracefully.

use std::sync::Arc;
use std::time::Duration;

use lapin::Connection;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use worker_core::config::redact_url;
use worker_core::observer::Observers;
use worker_core::pipeline::Runtime;
use worker_core::telemetry::health::Health;
use worker_core::telemetry::metrics::Metrics;
use worker_core::telemetry::server::{self, Endpoint};
use worker_core::{DedupStore, Handler, Observer, Registry, WorkerConfig};

use crate::connection::connect;
use crate::consumer::{HandlerRunner, Stop};
use crate::error::WorkerError;
use crate::lag::{self, Watched};
use crate::publisher::Publisher;
use crate::topology;

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
            config: None,
            migrator: None,
            observers: Vec::new(),
            demo: None,
        }
    }
}

/// Collects handlers and settings, then starts the worker.
pub struct WorkerBuilder {
    registry: Registry,
    config: Option<WorkerConfig>,
    migrator: Option<Migrator>,
    observers: Vec<Arc<dyn Observer>>,
    demo: Option<crate::demo::DemoHook>,
}

impl std::fmt::Debug for WorkerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerBuilder")
            .field("handlers", &self.registry)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl WorkerBuilder {
    /// Registers a handler (a function annotated with `#[handler]`).
    pub fn handler<H: Handler>(mut self, handler: H) -> Self {
        self.registry.add(handler);
        self
    }

    /// Uses this configuration instead of reading the environment.
    pub fn config(mut self, config: WorkerConfig) -> Self {
        self.config = Some(config);
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

    /// Starts, then runs until SIGINT or SIGTERM and stops gracefully. A second signal during
    /// the graceful stop gives back every unfinished delivery at once.
    ///
    /// Installs the log and trace pipeline first (see
    /// [`worker_core::telemetry::logging`]) unless the application installed a subscriber.
    pub async fn serve(mut self) -> Result<(), WorkerError> {
        let config = match self.config.take() {
            Some(config) => config,
            None => WorkerConfig::from_env()?,
        };
        let _telemetry = worker_core::telemetry::logging::init(&config.consumer);
        self.config = Some(config);
        let mut worker = self.start().await?;
        tokio::select! {
            _ = worker_core::shutdown::signal() => {}
            result = worker.failed() => {
                worker.shutdown().await?;
                return result;
            }
        }
        let abandon = worker.stop.abandon.clone();
        tokio::spawn(async move {
            worker_core::shutdown::signal().await;
            tracing::warn!("second signal: giving back unfinished deliveries now");
            abandon.cancel();
        });
        worker.shutdown().await
    }

    /// Connects, migrates, declares the topology and starts consuming; returns once every
    /// handler's consumer is running.
    pub async fn start(self) -> Result<RunningWorker, WorkerError> {
        self.registry.validate()?;
        let config = match self.config {
            Some(config) => config,
            None => WorkerConfig::from_env()?,
        };
        let specs = self
            .registry
            .handlers()
            .iter()
            .map(|h| config.resolve(&h.spec()))
            .collect::<Result<Vec<_>, _>>()?;
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
        let health = Arc::new(Health::new());
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
            dedup
                .migrate(&pool)
                .await
                .map_err(|e| WorkerError::Migration(format!("dedup table: {e}")))?;
            if let Some(migrator) = &self.migrator {
                migrator
                    .run(&pool)
                    .await
                    .map_err(|e| WorkerError::Migration(e.to_string()))?;
            }
        }

        let connection = Arc::new(connect(&config.amqp_url, &config.consumer).await?);
        health.set_broker_connected(true);
        let on_error = Arc::clone(&health);
        connection.on_error(move |error| {
            tracing::error!(%error, "RabbitMQ connection lost");
            on_error.set_broker_connected(false);
        });
        let setup = connection
            .create_channel()
            .await
            .map_err(WorkerError::broker("open a channel"))?;
        topology::declare_exchange(&setup, &config).await?;
        let mut names = Vec::with_capacity(specs.len());
        for spec in &specs {
            names.push(topology::declare_handler(&setup, &config, spec).await?);
        }
        let _ = setup.close(200, "topology declared").await;

        let runtime = Runtime {
            pool: pool.clone(),
            dedup: dedup.clone(),
            consumer: config.consumer.clone(),
            observer: Arc::new(Observers(
                std::iter::once(Arc::clone(&metrics) as Arc<dyn Observer>)
                    .chain(self.observers)
                    .collect(),
            )),
        };
        let publisher = Arc::new(Publisher::new(Arc::clone(&connection)));
        let stop = Stop {
            consuming: CancellationToken::new(),
            abandon: CancellationToken::new(),
            tasks: TaskTracker::new(),
        };
        let mut consumers = JoinSet::new();
        let mut watched = Vec::with_capacity(specs.len());
        for ((handler, spec), names) in self.registry.handlers().iter().zip(specs).zip(names) {
            let channel = connection
                .create_channel()
                .await
                .map_err(WorkerError::broker("open a consumer channel"))?;
            let tag = format!("{}-{}-{}", config.consumer, spec.name, std::process::id());
            watched.push(Watched {
                handler: spec.name,
                names: names.clone(),
                delay_levels: spec.retry.level_count(),
            });
            let runner = Arc::new(HandlerRunner {
                health: Arc::clone(&health),
                handler: Arc::clone(handler),
                spec,
                names,
                runtime: runtime.clone(),
                publisher: Arc::clone(&publisher),
            });
            let stop = stop.clone();
            consumers.spawn(async move {
                let result = runner.consume(channel.clone(), tag, stop).await;
                (channel, result)
            });
        }
        let pruner = tokio::spawn(prune_forever(pool.clone(), dedup, config.dedup_retention));
        let lag_poller = tokio::spawn(lag::poll_forever(
            Arc::clone(&connection),
            watched,
            Arc::clone(&metrics),
            config.lag_poll_interval,
        ));
        tracing::info!(
            amqp = %redact_url(&config.amqp_url),
            database = %redact_url(&config.database_url),
            handlers = ?self.registry,
            "worker started"
        );
        Ok(RunningWorker {
            stop,
            consumers,
            connection,
            pool,
            pruner,
            lag_poller,
            endpoint,
            health,
            shutdown_timeout: config.shutdown_timeout,
        })
    }
}

async fn connect_database(
    config: &WorkerConfig,
    specs: &[worker_core::HandlerSpec],
) -> Result<PgPool, WorkerError> {
    let database_error = |source| WorkerError::Database {
        url: redact_url(&config.database_url),
        source,
    };
    let options: PgConnectOptions = config.database_url.parse().map_err(database_error)?;
    let search_path = format!("{},public", config.db_schema.quoted());
    let options = options.options([("search_path", search_path.as_str())]);
    let wanted: usize = specs
        .iter()
        .filter(|s| s.dedup)
        .map(|s| s.concurrency)
        .sum::<usize>()
        + 2;
    let size = config
        .db_pool_size
        .max(1)
        .min(u32::try_from(wanted).unwrap_or(u32::MAX))
        .max(2);
    PgPoolOptions::new()
        .max_connections(size)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .map_err(database_error)
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

/// A started worker. Stop it with [`RunningWorker::shutdown`].
#[derive(Debug)]
pub struct RunningWorker {
    stop: Stop,
    consumers: JoinSet<(lapin::Channel, Result<(), WorkerError>)>,
    connection: Arc<Connection>,
    pool: PgPool,
    pruner: tokio::task::JoinHandle<()>,
    lag_poller: tokio::task::JoinHandle<()>,
    endpoint: Option<Endpoint>,
    health: Arc<Health>,
    shutdown_timeout: Duration,
}

impl std::fmt::Debug for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stop").finish_non_exhaustive()
    }
}

impl RunningWorker {
    /// Resolves when a consumer stops on its own (the broker connection was lost), with why.
    pub async fn failed(&mut self) -> Result<(), WorkerError> {
        loop {
            match self.consumers.join_next().await {
                Some(Ok((_, Err(error)))) => return Err(error),
                Some(Ok((_, Ok(())))) => continue,
                Some(Err(join_error)) => {
                    return Err(WorkerError::ConsumerLost {
                        queue: "?".into(),
                        reason: format!("consumer task failed: {join_error}"),
                    })
                }
                None => std::future::pending::<()>().await,
            }
        }
    }

    /// Stops gracefully: stop consuming, let in-flight deliveries finish within the shutdown
    /// timeout, give back (nack) the ones that do not, then close the channels, the connection and
    /// the pool. Nothing that did not finish is acked.
    pub async fn shutdown(mut self) -> Result<(), WorkerError> {
        self.stop.consuming.cancel();
        let mut channels = Vec::new();
        while let Some(joined) = self.consumers.join_next().await {
            if let Ok((channel, _)) = joined {
                channels.push(channel);
            }
        }
        self.stop.tasks.close();
        if tokio::time::timeout(self.shutdown_timeout, self.stop.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(timeout = ?self.shutdown_timeout, "in-flight deliveries did not finish in time: giving them back");
            self.stop.abandon.cancel();
            self.stop.tasks.wait().await;
        }
        for channel in channels {
            let _ = channel.close(200, "worker stopping").await;
        }
        let _ = self.connection.close(200, "worker stopping").await;
        self.pruner.abort();
        self.lag_poller.abort();
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

/// The command line (see [`crate::cli`]).
impl WorkerBuilder {
    /// Registers the application's demo burst, published by the `demo` subcommand and by
    /// `run --demo` (see [`crate::demo`]).
    pub fn demo<F>(mut self, demo: F) -> Self
    where
        F: Fn(
                crate::demo::DemoPublisher,
            )
                -> worker_core::handler::BoxFuture<'static, Result<String, crate::demo::DemoError>>
            + Send
            + Sync
            + 'static,
    {
        self.demo = Some(Arc::new(demo));
        self
    }

    /// The worker binary's `main`: parses the command line and runs the subcommand — `run`
    /// (the default: [`serve`](Self::serve)), `handlers`, `topology`, `dlq ...` or `demo`
    /// (`--help` lists them). Returns the process exit code.
    ///
    /// ```no_run
    /// # fn worker() -> worker_rabbitmq::WorkerBuilder { unimplemented!() }
    /// #[tokio::main]
    /// async fn main() -> std::process::ExitCode {
    ///     worker().run().await
    /// }
    /// ```
    pub async fn run(self) -> std::process::ExitCode {
        crate::cli::main_process(self).await
    }

    /// Runs the subcommand given by `args` (the first is the program name, as in
    /// `std::env::args`) and returns what it printed and its exit code instead of printing.
    pub async fn run_with_args<I, T>(self, args: I) -> crate::cli::CliOutput
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        crate::cli::main(self, args, crate::cli::Console::capture()).await
    }

    pub(crate) fn cli_parts(
        &self,
    ) -> (
        &Registry,
        Option<&WorkerConfig>,
        Option<&crate::demo::DemoHook>,
    ) {
        (&self.registry, self.config.as_ref(), self.demo.as_ref())
    }
}
