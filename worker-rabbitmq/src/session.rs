//! One connection's worth of consuming (a [`Session`]), and the supervisor that replaces a session
//! whose connection was lost: it reconnects with backoff and jitter, re-declares the topology and
//! resumes every handler's consumer, so no consumer is ever left silently dead.
//!
//! Deliveries in flight when a connection is lost cannot be acked any more; the broker requeues
//! them, and the redelivery is deduplicated (their results are not lost: a committed transaction
//! makes the redelivery a duplicate). Each session has its own publisher, so a delivery of a lost
//! session never publishes a retry copy on the next connection while its original is requeued.

use std::sync::Arc;
use std::time::Duration;

use lapin::{Channel, Connection};
use rand::Rng;
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};
use worker_core::transport::breaker::Breaker;
use worker_core::transport::pipeline::Runtime;
use worker_core::transport::registry::ErasedHandler;
use worker_core::transport::telemetry::Metrics;
use worker_core::transport::telemetry::{Health, Unsettled};
use worker_core::{HandlerSpec, WorkerConfig};

use crate::connection::{connect, on_error};
use crate::consume::{self, Plan, Source};
use crate::error::WorkerError;
use crate::lag::{self, Watched};
use crate::publisher::Publisher;
use crate::runner::{Runner, Stop};
use crate::settings::BrokerSettings;
use crate::topology::{self, QueueNames};

/// First pause before reconnecting; doubles up to [`MAX_RECONNECT_DELAY`], plus up to half again
/// as jitter so a fleet of workers does not reconnect in lockstep.
const FIRST_RECONNECT_DELAY: Duration = Duration::from_millis(500);
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(30);

/// Everything needed to open a session, again and again.
pub(crate) struct Blueprint {
    pub(crate) config: WorkerConfig,
    pub(crate) broker: BrokerSettings,
    pub(crate) handlers: Vec<Served>,
    pub(crate) runtime: Runtime,
    pub(crate) stop: Stop,
    pub(crate) health: Arc<Health>,
    pub(crate) metrics: Arc<Metrics>,
}

/// One handler as the worker serves it: the handler, its effective spec, its queues, and its
/// circuit breaker (one per handler for the worker's life, shared by its consumers and kept across
/// reconnections).
pub(crate) struct Served {
    pub(crate) handler: Arc<dyn ErasedHandler>,
    pub(crate) spec: HandlerSpec,
    pub(crate) names: QueueNames,
    pub(crate) breaker: Arc<Breaker>,
    /// Its deliveries taken and not settled (`worker_lag_seconds`).
    pub(crate) unsettled: Arc<Unsettled>,
}

/// A connection, its consumers and its lag poller.
pub(crate) struct Session {
    connection: Arc<Connection>,
    consumers: JoinSet<(Channel, Result<(), WorkerError>)>,
    lag_poller: JoinHandle<()>,
}

/// What a session leaves to close at shutdown.
#[derive(Debug)]
pub(crate) struct Leftovers {
    pub(crate) channels: Vec<Channel>,
    pub(crate) connection: Option<Arc<Connection>>,
}

impl Blueprint {
    /// Connects, declares the topology and starts every handler's consumer.
    pub(crate) async fn open(&self) -> Result<Session, WorkerError> {
        let connection = Arc::new(connect(&self.broker, &self.config.consumer).await?);
        let setup = connection
            .create_channel()
            .await
            .map_err(WorkerError::broker("open a channel"))?;
        topology::declare_exchange(&setup, &self.broker).await?;
        for served in &self.handlers {
            topology::declare_handler(&setup, &self.broker, &served.spec).await?;
        }
        let _ = setup.close(200, "topology declared".into()).await;
        // Watched from here: a declaration the broker refuses with a connection error (a missing
        // exchange type) is the start-up error itself, said once by whoever called `open`.
        let health = Arc::clone(&self.health);
        on_error(&connection, move |error| {
            tracing::error!(%error, "RabbitMQ connection lost");
            health.set_broker_connected(false);
        });

        let publisher = Arc::new(Publisher::new(Arc::clone(&connection)));
        self.health.set_broker_connected(true);
        let mut consumers = JoinSet::new();
        let mut watched = Vec::with_capacity(self.handlers.len());
        for handler in &self.handlers {
            let (spec, names) = (&handler.spec, &handler.names);
            watched.push(Watched {
                handler: spec.name,
                names: names.clone(),
                delay_levels: topology::delay_levels(spec),
                partitions: spec.partition.map_or(0, |p| p.partitions),
            });
            // A partitioned handler has one channel and consumer per partition queue; the broker
            // makes one consumer per queue active across all workers (single active consumer).
            for source in Source::of(&self.broker, spec) {
                self.start_consumer(&connection, &publisher, handler, source, &mut consumers)
                    .await?;
            }
        }
        let lag_poller = tokio::spawn(lag::poll_forever(
            Arc::clone(&connection),
            watched,
            Arc::clone(&self.metrics),
            self.config.lag_poll_interval,
        ));
        Ok(Session {
            connection,
            consumers,
            lag_poller,
        })
    }

    /// Opens a channel and starts the consumer of `source` for `handler` on it.
    async fn start_consumer(
        &self,
        connection: &Connection,
        publisher: &Arc<Publisher>,
        served: &Served,
        source: Source,
        consumers: &mut JoinSet<(Channel, Result<(), WorkerError>)>,
    ) -> Result<(), WorkerError> {
        let Served {
            handler,
            spec,
            names,
            breaker,
            unsettled,
        } = served;
        let plan = Plan::new(source, &self.config, spec, names);
        let channel = connection
            .create_channel()
            .await
            .map_err(WorkerError::broker(format!(
                "open a consumer channel for `{}`",
                plan.queue
            )))?;
        let runner = Arc::new(Runner {
            handler: Arc::clone(handler),
            spec: spec.clone(),
            names: names.clone(),
            runtime: self.runtime.clone(),
            publisher: Arc::clone(publisher),
            health: Arc::clone(&self.health),
            stop: self.stop.clone(),
            queue: plan.queue.clone(),
            slots: Arc::new(Semaphore::new(plan.slots)),
            breaker: Arc::clone(breaker),
            unsettled: Arc::clone(unsettled),
        });
        consumers.spawn(async move {
            let result = consume::consume(runner, channel.clone(), plan).await;
            (channel, result)
        });
        Ok(())
    }

    async fn reconnect(&self) -> Option<Session> {
        let mut delay = FIRST_RECONNECT_DELAY;
        loop {
            let jitter = rand::thread_rng().gen_range(0..=delay.as_millis() as u64 / 2);
            let pause = delay + Duration::from_millis(jitter);
            tokio::select! {
                biased;
                _ = self.stop.consuming.cancelled() => return None,
                _ = tokio::time::sleep(pause) => {}
            }
            match self.open().await {
                Ok(session) => {
                    tracing::info!("reconnected to RabbitMQ; every handler is consuming again");
                    return Some(session);
                }
                Err(error) => {
                    tracing::warn!(%error, retry_in = ?(delay * 2).min(MAX_RECONNECT_DELAY), "reconnecting failed");
                    delay = (delay * 2).min(MAX_RECONNECT_DELAY);
                }
            }
        }
    }
}

impl Session {
    /// Resolves with the first consumer that stopped on its own.
    async fn failure(&mut self) -> WorkerError {
        loop {
            match self.consumers.join_next().await {
                Some(Ok((_, Err(error)))) => return error,
                Some(Ok((_, Ok(())))) => continue,
                Some(Err(join_error)) => {
                    return WorkerError::ConsumerLost {
                        queue: "?".into(),
                        reason: format!("consumer task failed: {join_error}"),
                    }
                }
                None => std::future::pending::<()>().await,
            }
        }
    }

    /// After a stop request: waits for the consumers to cancel and hands back what to close.
    async fn finish(mut self) -> Leftovers {
        let mut channels = Vec::new();
        while let Some(joined) = self.consumers.join_next().await {
            if let Ok((channel, _)) = joined {
                channels.push(channel);
            }
        }
        self.lag_poller.abort();
        Leftovers {
            channels,
            connection: Some(self.connection),
        }
    }

    /// After a failure: stops everything of this session.
    async fn discard(mut self) {
        self.consumers.shutdown().await;
        self.lag_poller.abort();
        let _ = self
            .connection
            .close(320, "worker reconnecting".into())
            .await;
    }
}

/// Runs sessions until a stop is requested, replacing each lost one. Returns what the last
/// session leaves to close.
pub(crate) async fn supervise(blueprint: Blueprint, mut session: Session) -> Leftovers {
    loop {
        let error = tokio::select! {
            biased;
            _ = blueprint.stop.consuming.cancelled() => return session.finish().await,
            error = session.failure() => error,
        };
        blueprint.health.set_broker_connected(false);
        tracing::error!(%error, "consuming stopped; reconnecting");
        session.discard().await;
        match blueprint.reconnect().await {
            Some(next) => session = next,
            None => {
                return Leftovers {
                    channels: Vec::new(),
                    connection: None,
                }
            }
        }
    }
}
