//! The benchmark's own namespace: exchange `events.<id>`, queues `<id>.<scenario handler>...`,
//! schema `<id>` with the business and hand-written dedup tables. Created before the scenarios,
//! removed after them (also when one fails).

use std::collections::HashMap;

use lapin::options::{ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use rand::Rng;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use worker_core::transport::dedup::Identifier;
use worker_core::HandlerOverrides;
use worker_core::{Handler, HandlerSpec, WorkerConfig};
use worker_rabbitmq::topology::{self, QueueNames};
use worker_rabbitmq::BrokerSettings;

use crate::cli::{Args, Scenario};
use crate::scenario::framework;
use crate::BoxError;

/// The business table that c and d insert into (no unique key: a duplicate effect shows).
pub const EFFECTS_TABLE: &str = "bench_effects";
/// The hand-written consumer's dedup table, shaped like the framework's `processed_events`.
pub const HAND_DEDUP_TABLE: &str = "hand_processed_events";

/// One benchmark run's names.
#[derive(Debug, Clone)]
pub struct Namespace {
    /// `b_` + 10 hex digits: the schema, the queue prefix and the exchange suffix.
    pub id: String,
    /// The framework's configuration in this namespace.
    pub config: WorkerConfig,
    /// The broker settings in this namespace: its exchange and queue prefix.
    pub broker: BrokerSettings,
}

impl Namespace {
    /// A new, unique namespace (nothing is created yet).
    pub fn fresh(args: &Args) -> Self {
        let id = format!(
            "b_{:010x}",
            rand::thread_rng().gen::<u64>() & 0xff_ffff_ffff
        );
        Self::named(id, args)
    }

    /// The namespace `id` (a child process joins its parent's).
    pub fn named(id: String, args: &Args) -> Self {
        let handlers = [Scenario::B, Scenario::D]
            .into_iter()
            .map(|s| {
                let overrides = HandlerOverrides {
                    concurrency: Some(usize::from(args.in_flight)),
                    ..Default::default()
                };
                (spec(s).name.to_owned(), overrides)
            })
            .collect::<HashMap<_, _>>();
        let broker = BrokerSettings {
            url: args.amqp_url.clone(),
            exchange: format!("events.{id}"),
            queue_prefix: format!("{id}."),
            ..BrokerSettings::default()
        };
        let config = WorkerConfig {
            database_url: args.database_url.clone(),
            db_schema: Identifier::new(&id).expect("bench ids are identifiers"),
            consumer: "worker-bench".into(),
            metrics_addr: None,
            batch_size: args.batch_size,
            batch_linger: std::time::Duration::from_millis(args.batch_linger_ms),
            handlers,
            ..WorkerConfig::default()
        };
        Self { id, config, broker }
    }

    /// The queues of `scenario`.
    pub fn names(&self, scenario: Scenario) -> QueueNames {
        QueueNames::new(&self.broker, spec(scenario).name)
    }

    /// A pool whose `search_path` is this namespace's schema.
    pub async fn pool(&self, size: u32) -> Result<PgPool, BoxError> {
        let options: PgConnectOptions = self.config.database_url.parse()?;
        let search_path = format!("\"{}\",public", self.id);
        Ok(PgPoolOptions::new()
            .max_connections(size)
            .connect_with(options.options([("search_path", search_path.as_str())]))
            .await?)
    }

    /// Creates the schema, the tables and, for every scenario, the same topology the framework
    /// declares (quorum work queue with its delivery limit, delay queues, DLQ).
    pub async fn create(&self) -> Result<(), BoxError> {
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(&self.config.database_url)
            .await?;
        let schema = format!("\"{}\"", self.id);
        for sql in [
            format!("CREATE SCHEMA {schema}"),
            format!(
                "CREATE TABLE {schema}.{EFFECTS_TABLE} (event_id TEXT NOT NULL, scenario TEXT NOT NULL, order_id TEXT NOT NULL, amount BIGINT NOT NULL)"
            ),
            format!(
                "CREATE TABLE {schema}.{HAND_DEDUP_TABLE} (handler TEXT NOT NULL, event_id TEXT NOT NULL, processed_at TIMESTAMPTZ NOT NULL DEFAULT now(), PRIMARY KEY (handler, event_id))"
            ),
        ] {
            sqlx::query(&sql).execute(&admin).await?;
        }
        admin.close().await;
        let connection = connect(&self.broker.url, "worker-bench-setup").await?;
        let channel = connection.create_channel().await?;
        topology::declare_exchange(&channel, &self.broker).await?;
        for scenario in [Scenario::A, Scenario::B, Scenario::C, Scenario::D] {
            topology::declare_handler(&channel, &self.broker, &spec(scenario)).await?;
        }
        let _ = connection.close(200, "declared".into()).await;
        Ok(())
    }

    /// Ready messages in `queue`.
    pub async fn depth(&self, connection: &Connection, queue: &str) -> Result<u32, BoxError> {
        let channel = connection.create_channel().await?;
        let options = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let queue = channel
            .queue_declare(queue.into(), options, FieldTable::default())
            .await?;
        let _ = channel.close(200, "".into()).await;
        Ok(queue.message_count())
    }

    /// Deletes every queue, the exchange and the schema.
    pub async fn destroy(&self) -> Result<(), BoxError> {
        let connection = connect(&self.broker.url, "worker-bench-cleanup").await?;
        let channel = connection.create_channel().await?;
        for scenario in [Scenario::A, Scenario::B, Scenario::C, Scenario::D] {
            let spec = spec(scenario);
            let names = QueueNames::new(&self.broker, spec.name);
            let delays =
                (1..=worker_rabbitmq::delay::level_count(&spec.retry)).map(|l| names.delay(l));
            for queue in [
                names.work.clone(),
                names.dlq.clone(),
                names.delivery_limit.clone(),
            ]
            .into_iter()
            .chain(delays)
            {
                channel
                    .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                    .await?;
            }
        }
        channel
            .exchange_delete(
                self.broker.exchange.as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await?;
        let _ = connection.close(200, "cleaned up".into()).await;
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(&self.config.database_url)
            .await?;
        sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.id))
            .execute(&admin)
            .await?;
        admin.close().await;
        Ok(())
    }
}

/// The handler spec whose queue `scenario` consumes: the framework's handlers for b and d,
/// stand-ins with the same defaults for a and c (so every queue is declared alike).
pub fn spec(scenario: Scenario) -> HandlerSpec {
    match scenario {
        Scenario::A => HandlerSpec::new("bare", "BenchBare"),
        // h runs b's handler in memory; it has no queue in the namespace.
        Scenario::B | Scenario::H => framework::noop.spec(),
        Scenario::C => HandlerSpec::new("hand", "BenchHand"),
        Scenario::D => framework::dedup_insert.spec(),
    }
}

/// Opens an AMQP connection on the tokio runtime, as the framework does.
pub async fn connect(url: &str, name: &str) -> Result<Connection, BoxError> {
    // lapin's default runtime with the `tokio` feature: the runtime this runs on.
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    Ok(Connection::connect(url, properties).await?)
}
