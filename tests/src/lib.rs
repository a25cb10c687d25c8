//! Shared helpers for the end-to-end tests: an isolated broker namespace and database schema per
//! test, a plain AMQP producer, and readers for queues and tables. Everything a test creates is
//! removed when its [`TestEnv`] is dropped, even when the test fails.

pub mod broker_tls;
pub mod handlers;
pub mod otlp;
pub mod partitioned;
pub mod postgres_tls;
pub mod silent_proxy;

use std::future::Future;
use std::time::{Duration, Instant};

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::Confirmation;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use rand::Rng;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use worker_core::transport::config::DEFAULT_DATABASE_URL;
use worker_core::transport::dedup::Identifier;
use worker_core::{DeadLetterRecord, RetryOverrides, WorkerConfig};
use worker_rabbitmq::settings::DEFAULT_AMQP_URL;
use worker_rabbitmq::{BrokerSettings, Settings};

/// Generous upper bound for anything a test waits for.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// The broker URL the tests use.
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| DEFAULT_AMQP_URL.into())
}

/// The database URL the tests use.
pub fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.into())
}

/// Opens an AMQP connection on the tokio runtime.
pub async fn amqp_connect() -> Connection {
    // lapin's default runtime with the `tokio` feature: the runtime this runs on.
    Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("RabbitMQ must be running on 127.0.0.1:5672")
}

/// One test's isolated namespace: exchange `events.<id>`, queues `<id>.<handler>...`, schema `<id>`.
#[derive(Debug)]
pub struct TestEnv {
    /// Unique id (`t_` + 10 hex digits): also the schema name.
    pub id: String,
    /// The worker configuration for this namespace, with short retry delays.
    pub config: WorkerConfig,
    /// The broker settings for this namespace: its exchange and queue prefix.
    pub broker: BrokerSettings,
    /// A pool whose search_path is the test schema.
    pub pool: PgPool,
    /// Publishing and reading connection.
    pub connection: Connection,
    /// A channel with publisher confirms.
    pub channel: Channel,
}

impl TestEnv {
    /// A fresh namespace; the schema exists (empty) so the pool can use it.
    pub async fn new() -> Self {
        let id = format!(
            "t_{:010x}",
            rand::thread_rng().gen::<u64>() & 0xff_ffff_ffff
        );
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(&database_url())
            .await
            .expect("PostgreSQL must be running on 127.0.0.1:5432");
        sqlx::query(&format!("CREATE SCHEMA \"{id}\""))
            .execute(&admin)
            .await
            .expect("create test schema");
        admin.close().await;
        let options: PgConnectOptions = database_url().parse().expect("DATABASE_URL");
        let search_path = format!("\"{id}\"");
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect_with(options.options([("search_path", search_path.as_str())]))
            .await
            .expect("connect test pool");
        let broker = BrokerSettings {
            url: amqp_url(),
            exchange: format!("events.{id}"),
            queue_prefix: format!("{id}."),
            ..BrokerSettings::default()
        };
        let config = WorkerConfig {
            database_url: database_url(),
            db_schema: Identifier::new(&id).expect("test ids are identifiers"),
            consumer: "worker-tests-0.1.0".into(),
            // Most tests look at the dead-letter queues themselves; the store's own tests
            // (`dlq_store`, `dlq_ingest`) and the README's story (`cli_demo`) turn it on.
            dlq_store: false,
            shutdown_timeout: Duration::from_secs(10),
            db_pool_size: 40,
            metrics_addr: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
            lag_poll_interval: Duration::from_millis(200),
            retry: RetryOverrides {
                base: Some(Duration::from_millis(100)),
                cap: Some(Duration::from_secs(1)),
                jitter: Some(Duration::from_millis(50)),
                max_attempts: None,
            },
            ..WorkerConfig::default()
        };
        let connection = amqp_connect().await;
        let channel = connection.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm_select");
        Self {
            id,
            config,
            broker,
            pool,
            connection,
            channel,
        }
    }

    /// The work queue of `handler` in this namespace.
    pub fn queue(&self, handler: &str) -> String {
        self.broker.queue_name(handler)
    }

    /// The settings of a worker in this namespace: [`TestEnv::config`] and [`TestEnv::broker`].
    pub fn settings(&self) -> Settings {
        Settings {
            worker: self.config.clone(),
            broker: self.broker.clone(),
            ..Settings::default()
        }
    }

    /// Publishes like any producer would: to the exchange, routing key = event type, persistent,
    /// waiting for the confirm.
    pub async fn publish(&self, routing_key: &str, body: &[u8], properties: BasicProperties) {
        let confirm = self
            .channel
            .basic_publish(
                self.broker.exchange.as_str().into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                body,
                properties.with_delivery_mode(2),
            )
            .await
            .expect("publish");
        match confirm.await.expect("confirm") {
            Confirmation::Ack(None) => {}
            other => panic!("publish to {routing_key} not confirmed or returned: {other:?}"),
        }
    }

    /// Publishes a JSON event with `message_id` set.
    pub async fn publish_json(&self, event_type: &str, event_id: &str, payload: serde_json::Value) {
        let body = serde_json::to_vec(&payload).expect("json");
        let properties = BasicProperties::default()
            .with_message_id(ShortString::from(event_id))
            .with_content_type(ShortString::from("application/json"));
        self.publish(event_type, &body, properties).await;
    }

    /// Messages ready in `queue` (0 if it does not exist).
    pub async fn depth(&self, queue: &str) -> u32 {
        let channel = self.connection.create_channel().await.expect("channel");
        let options = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let count = channel
            .queue_declare(queue.into(), options, FieldTable::default())
            .await
            .map(|q| q.message_count())
            .unwrap_or(0);
        let _ = channel.close(200, "".into()).await;
        count
    }

    /// Takes every record now in `<handler>.dlq` (removing them).
    pub async fn take_dead_letters(
        &self,
        handler: &str,
    ) -> Vec<(BasicProperties, DeadLetterRecord)> {
        let queue = format!("{}.dlq", self.queue(handler));
        let mut out = Vec::new();
        while let Some(message) = self
            .channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic_get")
        {
            let record = serde_json::from_slice(&message.delivery.data).unwrap_or_else(|e| {
                panic!(
                    "DLQ body is not a record ({e}): {}",
                    String::from_utf8_lossy(&message.delivery.data)
                )
            });
            out.push((message.delivery.properties.clone(), record));
        }
        out
    }

    /// Waits until `handler`'s DLQ holds `n` records, then takes them.
    pub async fn wait_dead_letters(
        &self,
        handler: &str,
        n: usize,
    ) -> Vec<(BasicProperties, DeadLetterRecord)> {
        let queue = format!("{}.dlq", self.queue(handler));
        eventually(&format!("{n} records in {queue}"), || async {
            self.depth(&queue).await as usize >= n
        })
        .await;
        let records = self.take_dead_letters(handler).await;
        assert_eq!(records.len(), n, "records in {queue}");
        records
    }

    /// `SELECT count(*)` with one text parameter.
    pub async fn count(&self, sql: &str, arg: &str) -> i64 {
        sqlx::query_scalar(sql)
            .bind(arg)
            .fetch_one(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Attempts recorded by the scripted handlers for `event_id` (any handler).
    pub async fn attempts(&self, event_id: &str) -> i64 {
        self.count(
            "SELECT count(*) FROM attempts WHERE event_id = $1",
            event_id,
        )
        .await
    }

    /// Effects recorded by the scripted handlers for `event_id` (any handler).
    pub async fn effects(&self, event_id: &str) -> i64 {
        self.count("SELECT count(*) FROM effects WHERE event_id = $1", event_id)
            .await
    }

    /// The test-handler migrations (attempts and effects tables).
    pub fn migrator() -> sqlx::migrate::Migrator {
        sqlx::migrate!()
    }
}

/// A string header value.
pub fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

/// Waits for a child worker process that is expected to die (abort) on its own; panics if it is
/// still running after [`PATIENCE`] or exits successfully.
pub async fn wait_for_abort(child: &mut tokio::process::Child) {
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait child") {
            break status;
        }
        assert!(start.elapsed() < PATIENCE, "the child did not abort");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!status.success(), "the child aborted: {status:?}");
}

/// Asks a worker process to stop (SIGTERM) and waits for it; kills it if it does not stop
/// within [`PATIENCE`].
pub async fn stop_gracefully(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    if tokio::time::timeout(PATIENCE, child.wait()).await.is_err() {
        child.kill().await.expect("stop the child");
    }
}

/// Polls `condition` every 50 ms until it holds; panics after [`PATIENCE`].
pub async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !condition().await {
        assert!(
            start.elapsed() < PATIENCE,
            "timed out after {PATIENCE:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        remove_namespace(
            &self.broker.queue_prefix,
            &[self.broker.exchange.as_str()],
            &[self.id.as_str()],
        );
    }
}

/// Deletes every queue and exchange whose name starts with `prefix`, the `exchanges` and the
/// Postgres `schemas` (with what is in them). Runs on its own thread and runtime, so it also
/// works from a `Drop` while a test panics.
pub fn remove_namespace(prefix: &str, exchanges: &[&str], schemas: &[&str]) {
    assert!(
        !prefix.is_empty(),
        "an empty prefix would remove every queue"
    );
    let prefix = prefix.to_owned();
    let exchanges: Vec<String> = exchanges.iter().map(|e| (*e).to_owned()).collect();
    let schemas: Vec<String> = schemas.iter().map(|s| (*s).to_owned()).collect();
    let cleanup = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let connection = amqp_connect().await;
            let channel = connection.create_channel().await.expect("channel");
            for queue in list_queues(&prefix) {
                let _ = channel
                    .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                    .await;
            }
            // Exchanges a worker declares per handler (partitioned handlers' hash exchanges).
            for exchange in exchanges.into_iter().chain(list_exchanges(&prefix)) {
                let _ = channel
                    .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                    .await;
            }
            let _ = connection.close(200, "test cleanup".into()).await;
            if let Ok(admin) = PgPoolOptions::new()
                .max_connections(1)
                .connect(&database_url())
                .await
            {
                for schema in schemas {
                    let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                        .execute(&admin)
                        .await;
                }
                admin.close().await;
            }
        });
    });
    let _ = cleanup.join();
}

/// Every queue whose name starts with `prefix`, as `rabbitmqctl` lists them.
fn list_queues(prefix: &str) -> Vec<String> {
    list_named("list_queues", prefix)
}

/// Every exchange whose name starts with `prefix`, as `rabbitmqctl` lists them.
fn list_exchanges(prefix: &str) -> Vec<String> {
    list_named("list_exchanges", prefix)
}

fn list_named(what: &str, prefix: &str) -> Vec<String> {
    let output = std::process::Command::new("rabbitmqctl")
        .args([what, "-q", "--no-table-headers", "name"])
        .output();
    match output {
        Ok(output) => String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::trim)
            .filter(|q| q.starts_with(prefix))
            .map(str::to_owned)
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// One settlement: `(handler, event id, outcome, acked)`.
pub type Settlement = (String, Option<String>, &'static str, bool);

/// An observer that remembers every settlement.
#[derive(Debug, Clone, Default)]
pub struct Outcomes(pub std::sync::Arc<std::sync::Mutex<Vec<Settlement>>>);

impl worker_core::Observer for Outcomes {
    fn settled(&self, s: &worker_core::Settlement<'_>) {
        self.0.lock().expect("not poisoned").push((
            s.handler.into(),
            s.event_id.map(Into::into),
            s.outcome,
            s.acked,
        ));
    }
}

impl Outcomes {
    /// The outcomes recorded for `event_id`, in order.
    pub fn of(&self, event_id: &str) -> Vec<(&'static str, bool)> {
        self.0
            .lock()
            .expect("not poisoned")
            .iter()
            .filter(|o| o.1.as_deref() == Some(event_id))
            .map(|o| (o.2, o.3))
            .collect()
    }
}

impl TestEnv {
    /// Consumers currently attached to `queue` (0 if it does not exist).
    pub async fn consumers(&self, queue: &str) -> u32 {
        let channel = self.connection.create_channel().await.expect("channel");
        let options = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let count = channel
            .queue_declare(queue.into(), options, FieldTable::default())
            .await
            .map(|q| q.consumer_count())
            .unwrap_or(0);
        let _ = channel.close(200, "".into()).await;
        count
    }

    /// Environment variables that make a worker process use this namespace.
    pub fn worker_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AMQP_URL", self.broker.url.clone()),
            ("DATABASE_URL", self.config.database_url.clone()),
            ("WORKER_EXCHANGE", self.broker.exchange.clone()),
            ("WORKER_QUEUE_PREFIX", self.broker.queue_prefix.clone()),
            ("WORKER_DB_SCHEMA", self.id.clone()),
            ("WORKER_CONSUMER", self.config.consumer.clone()),
            ("WORKER_RETRY_BASE", "100ms".into()),
            ("WORKER_RETRY_CAP", "1s".into()),
            ("WORKER_RETRY_JITTER", "50ms".into()),
            ("WORKER_METRICS_ADDR", "127.0.0.1:0".into()),
            (
                "WORKER_DLQ_STORE",
                if self.config.dlq_store { "on" } else { "off" }.into(),
            ),
            (
                "WORKER_DELIVERY_LIMIT",
                self.broker
                    .delivery_limit
                    .map(|l| l.to_string())
                    .unwrap_or_else(|| "off".into()),
            ),
        ]
    }
}

/// `GET path` on `addr` over plain HTTP/1.0: the status code and the body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the metrics endpoint");
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .expect("send request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("read response");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Closes the broker connection whose client-provided name is `name`, as an operator would
/// (`rabbitmqctl close_connection`). Returns how many connections it closed.
pub fn close_connections_named(name: &str) -> usize {
    let output = std::process::Command::new("rabbitmqctl")
        .args([
            "list_connections",
            "-q",
            "--no-table-headers",
            "pid",
            "client_properties",
        ])
        .output()
        .expect("rabbitmqctl");
    let listing = String::from_utf8_lossy(&output.stdout);
    let needle = format!("\"{name}\"");
    let mut closed = 0;
    for line in listing.lines().filter(|line| line.contains(&needle)) {
        let Some(pid) = line.split_whitespace().next() else {
            continue;
        };
        let status = std::process::Command::new("rabbitmqctl")
            .args(["close_connection", pid, "test: simulated connection loss"])
            .output()
            .map(|o| o.status);
        if status.map(|s| s.success()).unwrap_or(false) {
            closed += 1;
        }
    }
    closed
}

/// A TCP proxy in front of a real server that a test can take down and bring back, to simulate
/// an outage of that server (only for connections made through the proxy).
#[derive(Debug)]
pub struct TcpProxy {
    /// The proxy's address.
    pub addr: std::net::SocketAddr,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cut: tokio::sync::watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on an ephemeral local port and forwards to `target`.
    pub async fn start(target: std::net::SocketAddr) -> Self {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (cut, _) = tokio::sync::watch::channel(0u64);
        let (accept_up, accept_cut) = (up.clone(), cut.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !accept_up.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let mut cut = accept_cut.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Self {
            addr,
            up,
            cut,
            task,
        }
    }

    /// Drops every proxied connection and refuses new ones until [`TcpProxy::restore`].
    pub fn take_down(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        self.cut.send_modify(|generation| *generation += 1);
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Makes sure the broker has the consistent-hash exchange plugin that partitioned handlers use
/// (it ships with RabbitMQ; `.ci/run` enables it too). Idempotent; runs once per test binary.
pub fn ensure_consistent_hash_plugin() {
    static ENABLED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    ENABLED.get_or_init(|| {
        let output = std::process::Command::new("rabbitmq-plugins")
            .args(["enable", "--quiet", "rabbitmq_consistent_hash_exchange"])
            .output();
        match output {
            Ok(output) if output.status.success() => {}
            Ok(output) => eprintln!("rabbitmq-plugins enable failed: {}", String::from_utf8_lossy(&output.stderr)),
            Err(error) => eprintln!("cannot run rabbitmq-plugins ({error}); enable rabbitmq_consistent_hash_exchange by hand"),
        }
    });
}

/// A local port nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

/// A listener that accepts connections and never says a word: a peer that swallows packets.
pub async fn silent_listener() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (port, task)
}
