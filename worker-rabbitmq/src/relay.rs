//! The outbox relay on RabbitMQ: publishes the rows of `<WORKER_DB_SCHEMA>.outbox` to the events
//! exchange, routing key = event type, `message_id` = event id, persistent JSON with the stored
//! trace headers, each with `mandatory` and a publisher confirm before its row is marked
//! published. The loop itself (batches, `SKIP LOCKED`, `LISTEN`/`NOTIFY`, ordering, retention) is
//! [`worker_core::transport::outbox::RelayLoop`]; this file is the broker side.
//!
//! Run it inside a worker (`WorkerBuilder::outbox()`, or `WORKER_OUTBOX=true`) or on its own:
//!
//! ```no_run
//! use worker_rabbitmq::{Relay, Settings};
//!
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! // Until SIGINT/SIGTERM; configuration from the environment, as for the worker.
//! Relay::run(Settings::from_env()?).await?;
//! # Ok(()) }
//! ```
//!
//! Several relays (in several processes) may drain one table: each row is in one relay's batch at
//! a time. An event nobody has bound a queue for is returned by the broker (`mandatory`): it is
//! retried with a backoff rather than marked published, so an event is never silently dropped
//! (and later events of its aggregate wait for it).

use std::sync::Arc;

use lapin::Connection;
use sqlx::PgPool;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use worker_core::transport::outbox::NoRelayObserver;
use worker_core::transport::outbox::{
    OutboxMessage, OutboxSink, OutboxTable, RelayLoop, SinkError,
};
use worker_core::BoxFuture;
use worker_core::WorkerConfig;
use worker_core::{OutboxSettings, RelayObserver};

use crate::connection::connect;
use crate::error::WorkerError;
use crate::publisher::{PublishError, Publisher};
use crate::settings::{BrokerSettings, Settings};
use crate::topology;

/// The outbox relay, on its own (outside a worker).
#[derive(Debug)]
pub struct Relay;

impl Relay {
    /// A relay for `config`'s schema and `broker`'s exchange, with default settings and no
    /// observer.
    pub fn builder(config: WorkerConfig, broker: BrokerSettings) -> RelayBuilder {
        RelayBuilder {
            config,
            broker,
            settings: OutboxSettings::default(),
            observer: Arc::new(NoRelayObserver),
        }
    }

    /// Starts a relay and runs it until SIGINT or SIGTERM.
    pub async fn run(settings: Settings) -> Result<(), WorkerError> {
        let relay = Self::builder(settings.worker, settings.broker)
            .settings(settings.outbox)
            .start()
            .await?;
        worker_core::transport::shutdown::signal().await;
        relay.shutdown().await;
        Ok(())
    }
}

/// Configures a standalone relay.
pub struct RelayBuilder {
    config: WorkerConfig,
    broker: BrokerSettings,
    settings: OutboxSettings,
    observer: Arc<dyn RelayObserver>,
}

impl std::fmt::Debug for RelayBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayBuilder")
            .field("config", &self.config)
            .field("broker", &self.broker)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl RelayBuilder {
    /// Batch size, poll interval, retention, backoff.
    pub fn settings(mut self, settings: OutboxSettings) -> Self {
        self.settings = settings;
        self
    }

    /// Hooks called as rows are confirmed and committed (telemetry, fault injection).
    pub fn observer(mut self, observer: impl RelayObserver) -> Self {
        self.observer = Arc::new(observer);
        self
    }

    /// Connects to PostgreSQL (and creates the outbox table when migrations are on) and to
    /// RabbitMQ (declaring the events exchange), then starts relaying.
    pub async fn start(self) -> Result<RunningRelay, WorkerError> {
        let config = self.config;
        topology::check_names(&self.broker, &[])?;
        let pool = crate::database::connect(&config, 2).await?;
        if config.migrate {
            worker_core::transport::outbox::migrate(&pool, &config.db_schema)
                .await
                .map_err(|e| WorkerError::Migration(format!("outbox table: {e}")))?;
        }
        let sink = RabbitSink::new(&config, &self.broker);
        sink.connected().await?;
        let mut relay = spawn_with(pool.clone(), &config, self.settings, sink, self.observer);
        relay.own_pool = Some(pool);
        Ok(relay)
    }
}

/// A running relay. Stop it with [`RunningRelay::shutdown`].
#[derive(Debug)]
pub struct RunningRelay {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    sink: Arc<RabbitSink>,
    own_pool: Option<PgPool>,
}

impl RunningRelay {
    /// Stops after the batch in progress (a batch cut short would only be published again).
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.task.await;
        self.sink.close().await;
        if let Some(pool) = self.own_pool {
            pool.close().await;
        }
    }
}

/// Starts the relay inside a worker, on the worker's pool; `observer` is the worker's metrics
/// (`worker_outbox_pending_events`).
pub(crate) fn spawn(
    pool: PgPool,
    config: &WorkerConfig,
    broker: &BrokerSettings,
    settings: OutboxSettings,
    observer: Arc<dyn RelayObserver>,
) -> RunningRelay {
    spawn_with(
        pool,
        config,
        settings,
        RabbitSink::new(config, broker),
        observer,
    )
}

fn spawn_with(
    pool: PgPool,
    config: &WorkerConfig,
    settings: OutboxSettings,
    sink: RabbitSink,
    observer: Arc<dyn RelayObserver>,
) -> RunningRelay {
    let stop = CancellationToken::new();
    let sink = Arc::new(sink);
    let relay = RelayLoop::new(
        pool,
        OutboxTable::new(config.db_schema.clone()),
        settings,
        Arc::clone(&sink) as Arc<dyn OutboxSink>,
        observer,
    );
    let token = stop.clone();
    let task = tokio::spawn(async move { relay.run(token.cancelled_owned()).await });
    RunningRelay {
        stop,
        task,
        sink,
        own_pool: None,
    }
}

/// Publishes to the events exchange through a [`Publisher`] on a connection of its own, opened
/// again after it is lost.
#[derive(Debug)]
struct RabbitSink {
    name: String,
    broker: BrokerSettings,
    state: Mutex<Option<(Arc<Connection>, Arc<Publisher>)>>,
}

impl RabbitSink {
    fn new(config: &WorkerConfig, broker: &BrokerSettings) -> Self {
        Self {
            name: format!("{}-outbox-relay", config.consumer),
            broker: broker.clone(),
            state: Mutex::new(None),
        }
    }

    async fn connected(&self) -> Result<Arc<Publisher>, WorkerError> {
        let mut state = self.state.lock().await;
        if let Some((connection, publisher)) = state.as_ref() {
            if connection.status().connected() {
                return Ok(Arc::clone(publisher));
            }
        }
        let connection = Arc::new(connect(&self.broker, &self.name).await?);
        let channel = connection
            .create_channel()
            .await
            .map_err(WorkerError::broker("open a channel for the outbox relay"))?;
        topology::declare_exchange(&channel, &self.broker).await?;
        let _ = channel.close(200, "exchange declared".into()).await;
        let publisher = Arc::new(Publisher::new(Arc::clone(&connection)));
        *state = Some((connection, Arc::clone(&publisher)));
        Ok(publisher)
    }
}

impl RabbitSink {
    async fn close(&self) {
        if let Some((connection, _)) = self.state.lock().await.take() {
            let _ = connection.close(200, "outbox relay stopping".into()).await;
        }
    }
}

impl OutboxSink for RabbitSink {
    fn publish<'a>(&'a self, message: &'a OutboxMessage) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            let publisher = self
                .connected()
                .await
                .map_err(|e| SinkError::Unavailable(e.to_string()))?;
            let span = tracing::info_span!(
                "publish",
                "otel.name" = %format_args!("publish {}", message.event_type),
                "otel.kind" = "producer",
                "messaging.system" = "rabbitmq",
                "messaging.operation.type" = "send",
                "messaging.destination.name" = %self.broker.exchange,
                "messaging.rabbitmq.destination.routing_key" = %message.event_type,
                "messaging.message.id" = %message.event_id,
            );
            match publisher
                .publish(&self.broker.exchange, &message.event_type, &message.message)
                .instrument(span)
                .await
            {
                Ok(()) => Ok(()),
                Err(
                    error @ (PublishError::Returned { .. }
                    | PublishError::Nacked { .. }
                    | PublishError::Unencodable { .. }),
                ) => Err(SinkError::Rejected(error.to_string())),
                Err(error) => Err(SinkError::Unavailable(error.to_string())),
            }
        })
    }
}

/// Whether the worker runs a relay, and with which settings: the `WORKER_OUTBOX` switch of
/// `settings` wins over the code's choice (`None`: not asked for; `Some(None)`: asked for, with
/// the settings read from the environment; `Some(Some(s))`: asked for, with `s`).
pub(crate) fn resolve(
    choice: Option<Option<OutboxSettings>>,
    settings: &Settings,
) -> Option<OutboxSettings> {
    let wanted = settings.outbox_switch.unwrap_or(choice.is_some());
    wanted.then(|| choice.flatten().unwrap_or_else(|| settings.outbox.clone()))
}
