//! What can stop a worker.

use worker_core::transport::registry::RegistryError;
use worker_core::ConfigError;

use crate::convert::TooLong;

/// Why the worker could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Bad configuration.
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    /// No handlers, or two with one name.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The broker did not accept the connection.
    #[error("cannot connect to RabbitMQ at {url}: {source} (is the broker running? set AMQP_URL)")]
    Connect {
        /// The URL, password redacted.
        url: String,
        /// The client's error.
        source: lapin::Error,
    },
    /// A broker operation failed.
    #[error("RabbitMQ: {action}: {source}")]
    Broker {
        /// What the worker was doing.
        action: String,
        /// The client's error.
        source: lapin::Error,
    },
    /// The database did not accept the connection.
    #[error("cannot connect to PostgreSQL at {url}: {source} ({})", database_hint(.source))]
    Database {
        /// The URL, password redacted.
        url: String,
        /// The driver's error.
        source: sqlx::Error,
    },
    /// The database or the broker did not answer a first connection in time.
    #[error("{service} at {url} did not answer within {after:?} (is it running, and reachable from here? set {setting})")]
    Unanswered {
        /// `PostgreSQL` or `RabbitMQ`.
        service: &'static str,
        /// The URL, password redacted.
        url: String,
        /// How long the worker waited.
        after: std::time::Duration,
        /// The variable that names it.
        setting: &'static str,
    },
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migration(String),
    /// The dedup retention is not longer than the longest retry horizon.
    #[error("WORKER_DEDUP_RETENTION ({retention:?}) must exceed the longest retry horizon ({horizon:?}, handler `{handler}`): otherwise a late retry could run twice")]
    RetentionTooShort {
        /// The configured retention.
        retention: std::time::Duration,
        /// The handler's horizon.
        horizon: std::time::Duration,
        /// The handler.
        handler: String,
    },
    /// A TLS file could not be read.
    #[error("cannot read the {what} at {path}: {source}")]
    TlsFile {
        /// Which file.
        what: String,
        /// Where.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The metrics endpoint could not listen.
    #[error("cannot serve metrics on {addr}: {source} (set WORKER_METRICS_ADDR to another address, or `off`)")]
    MetricsEndpoint {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The broker does not know the consistent-hash exchange type that partitioned handlers
    /// need: the plugin that ships with RabbitMQ is not enabled.
    #[error("RabbitMQ cannot declare `{exchange}` for the partitioned handler `{handler}`: the exchange type `x-consistent-hash` is missing ({source}). Enable the plugin that ships with RabbitMQ, then start again: rabbitmq-plugins enable rabbitmq_consistent_hash_exchange")]
    ConsistentHashPluginMissing {
        /// The hash exchange.
        exchange: String,
        /// The partitioned handler.
        handler: String,
        /// The broker's refusal (boxed: lapin 4's error is 80 bytes).
        source: Box<lapin::Error>,
    },
    /// A queue, exchange, binding or consumer name does not fit an AMQP short string.
    #[error("{0} (names are built from WORKER_QUEUE_PREFIX, WORKER_EXCHANGE, WORKER_CONSUMER and the handler's name and event type: shorten them)")]
    NameTooLong(TooLong),
    /// The connection to the broker was lost while consuming.
    #[error("lost the RabbitMQ connection while consuming `{queue}`: {reason}")]
    ConsumerLost {
        /// The queue.
        queue: String,
        /// What happened.
        reason: String,
    },
}

impl WorkerError {
    pub(crate) fn broker(action: impl Into<String>) -> impl FnOnce(lapin::Error) -> WorkerError {
        let action = action.into();
        move |source| WorkerError::Broker { action, source }
    }

    /// `Ok` when `name` (the `what`, as an on-call engineer reads it) fits an AMQP short string
    /// (255 bytes), [`WorkerError::NameTooLong`] otherwise: lapin panics on a longer one.
    pub(crate) fn check_name(what: &str, name: &str) -> Result<(), WorkerError> {
        crate::convert::short_string(name, || format!("the {what} `{name}`"))
            .map(drop)
            .map_err(WorkerError::NameTooLong)
    }
}

/// What to check when PostgreSQL did not accept a connection, read from the driver's error: the
/// TLS settings when the handshake failed or the server accepts only TLS, the client certificate
/// when the server asked for one, otherwise whether it runs at the configured URL.
fn database_hint(source: &sqlx::Error) -> &'static str {
    let refusal = match source {
        sqlx::Error::Database(error) => error.message(),
        _ => "",
    };
    // The driver reports a refused server certificate as an I/O error of the handshake.
    let handshake =
        matches!(source, sqlx::Error::Io(error) if error.to_string().contains("peer certificate"));
    if matches!(source, sqlx::Error::Tls(_)) || handshake {
        "TLS failed: check sslmode, sslrootcert (the CA that signed the server's certificate) and \
         that the URL's host is a name in that certificate; set DATABASE_URL"
    } else if refusal.contains("no encryption") {
        "the server accepts this connection only over TLS: add sslmode=require (or verify-full \
         with sslrootcert=<CA file>) to DATABASE_URL"
    } else if refusal.contains("certificate") {
        "the server authenticates this user by client certificate: add sslcert=<file> and \
         sslkey=<file> (a certificate whose common name is the user) to DATABASE_URL"
    } else {
        "is it running? set DATABASE_URL"
    }
}
