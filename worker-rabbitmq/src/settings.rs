//! Settings: the broker's ([`BrokerSettings`]) and everything a RabbitMQ worker reads
//! ([`Settings`]), from one read of the environment.
//!
//! The broker's variables (the rest are in [`worker_core::WorkerConfig`] and
//! [`worker_core::OutboxSettings`]):
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `AMQP_URL` | `amqp://guest:guest@127.0.0.1:5672/%2f` | broker |
//! | `WORKER_AMQP_CA_FILE` | unset | `amqps://`: PEM file of CA certificates to trust besides the system's |
//! | `WORKER_AMQP_CLIENT_IDENTITY`, `WORKER_AMQP_CLIENT_IDENTITY_PASSWORD` | unset | `amqps://`: client certificate and key as a PKCS#12 file, and its password |
//! | `WORKER_HEARTBEAT` | `10s` | AMQP heartbeat asked for (whole seconds) unless the URL sets `heartbeat=`; a silent connection is given up after about twice this |
//! | `WORKER_EXCHANGE` | `events` | topic exchange producers publish to |
//! | `WORKER_QUEUE_PREFIX` | the application's name and a dot (`WORKER_APP`, default the executable's name: `order-worker.`) | prepended to every queue name, so two applications with a handler of the same name do not compete for one queue; set it empty for bare handler names |
//! | `WORKER_QUEUE_TYPE` | `quorum` | work queue type: `quorum` or `classic` |
//! | `WORKER_DELIVERY_LIMIT` | `20` | quorum work queues: deliveries after which the broker dead-letters a message that was never settled (crash loop); `off` for none |

use std::path::PathBuf;
use std::time::Duration;

use worker_core::ConfigError;

use worker_core::transport::config::{
    app_name, parse_duration, parse_positive, redact_url, RedactedUrl, Secret, Variables,
};
use worker_core::OutboxSettings;
use worker_core::WorkerConfig;

/// Default broker URL.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The type of the work queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueType {
    /// Replicated, cluster-ready (the default).
    #[default]
    Quorum,
    /// Classic durable queues.
    Classic,
}

/// TLS for `amqps://` broker URLs (rustls). The system's root certificates are trusted, plus
/// `ca_file` when set; a client certificate is presented when `client_identity` is set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BrokerTls {
    /// PEM file of extra CA certificates to trust (`WORKER_AMQP_CA_FILE`).
    pub ca_file: Option<PathBuf>,
    /// PKCS#12 (`.p12`) file with the client certificate and key (`WORKER_AMQP_CLIENT_IDENTITY`).
    pub client_identity: Option<PathBuf>,
    /// Password of the PKCS#12 file (`WORKER_AMQP_CLIENT_IDENTITY_PASSWORD`).
    pub client_identity_password: Option<Secret>,
}

/// How the worker reaches RabbitMQ and names what it declares there. Its `Debug` shows the URL
/// without its password.
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerSettings {
    /// Broker URL (may hold credentials: log it with [`worker_core::transport::config::redact_url`]).
    pub url: String,
    /// TLS settings for `amqps://` URLs.
    pub tls: BrokerTls,
    /// AMQP heartbeat asked for, in whole seconds (a `heartbeat=` in the URL wins). A connection
    /// on which nothing arrives for about twice this long is given up and replaced.
    pub heartbeat: Duration,
    /// The topic exchange producers publish to.
    pub exchange: String,
    /// Prepended to every queue name.
    pub queue_prefix: String,
    /// Type of the work queues.
    pub queue_type: QueueType,
    /// Quorum work queues' `x-delivery-limit`: deliveries after which the broker dead-letters a
    /// message that never got settled (a crash loop); `None`: no limit.
    pub delivery_limit: Option<u32>,
}

/// Written out rather than derived, so the URL goes through [`redact_url`]; the exhaustive
/// pattern makes a new field a compile error here.
impl std::fmt::Debug for BrokerSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            url,
            tls,
            heartbeat,
            exchange,
            queue_prefix,
            queue_type,
            delivery_limit,
        } = self;
        f.debug_struct("BrokerSettings")
            .field("url", &RedactedUrl(url))
            .field("tls", tls)
            .field("heartbeat", heartbeat)
            .field("exchange", exchange)
            .field("queue_prefix", queue_prefix)
            .field("queue_type", queue_type)
            .field("delivery_limit", delivery_limit)
            .finish()
    }
}

/// The neutral defaults for settings built in code: no queue prefix. A worker process reads
/// [`BrokerSettings::from_env`], whose prefix comes from the application's name
/// ([`BrokerSettings::for_app`]).
impl Default for BrokerSettings {
    fn default() -> Self {
        Self {
            url: DEFAULT_AMQP_URL.into(),
            tls: BrokerTls::default(),
            heartbeat: Duration::from_secs(10),
            exchange: "events".into(),
            queue_prefix: String::new(),
            queue_type: QueueType::Quorum,
            delivery_limit: Some(20),
        }
    }
}

impl BrokerSettings {
    /// Reads the broker's variables (the table in the module docs) from the environment; unset
    /// ones keep their defaults.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(&Variables::from_env())
    }

    /// The defaults of application `app`: its queues named `<app>.<handler>`.
    ///
    /// ```
    /// use worker_rabbitmq::BrokerSettings;
    ///
    /// let broker = BrokerSettings::for_app("order-worker");
    /// assert_eq!(broker.queue_name("charge"), "order-worker.charge");
    /// ```
    pub fn for_app(app: &str) -> Self {
        Self {
            queue_prefix: format!("{app}."),
            ..Self::default()
        }
    }

    /// Reads the broker's variables from `vars`; unset ones keep the defaults of the
    /// application ([`app_name`], [`BrokerSettings::for_app`]).
    pub fn from_vars(vars: &Variables) -> Result<Self, ConfigError> {
        let defaults = Self::for_app(&app_name(vars)?);
        let url = vars.string("AMQP_URL").unwrap_or(defaults.url);
        if let Err(reason) = url.parse::<lapin::uri::AMQPUri>() {
            return Err(ConfigError::Invalid {
                var: "AMQP_URL".into(),
                value: redact_url(&url),
                reason: format!(
                    "not an AMQP URL ({reason}); expected amqp://user:password@host:5672/vhost (or amqps://)"
                ),
            });
        }
        Ok(Self {
            url,
            tls: BrokerTls {
                ca_file: vars.string("WORKER_AMQP_CA_FILE").map(Into::into),
                client_identity: vars.string("WORKER_AMQP_CLIENT_IDENTITY").map(Into::into),
                client_identity_password: vars
                    .string("WORKER_AMQP_CLIENT_IDENTITY_PASSWORD")
                    .map(Secret),
            },
            heartbeat: vars
                .parse("WORKER_HEARTBEAT", parse_heartbeat)?
                .unwrap_or(defaults.heartbeat),
            exchange: vars.string("WORKER_EXCHANGE").unwrap_or(defaults.exchange),
            queue_prefix: vars
                .string("WORKER_QUEUE_PREFIX")
                .unwrap_or(defaults.queue_prefix),
            queue_type: vars
                .parse("WORKER_QUEUE_TYPE", parse_queue_type)?
                .unwrap_or(defaults.queue_type),
            delivery_limit: vars
                .parse("WORKER_DELIVERY_LIMIT", parse_delivery_limit)?
                .unwrap_or(defaults.delivery_limit),
        })
    }

    /// The name of a handler's queues start with this: prefix + handler name.
    pub fn queue_name(&self, handler: &str) -> String {
        format!("{}{}", self.queue_prefix, handler)
    }
}

/// Everything a RabbitMQ worker (or relay, or operator's command) is configured with, read from
/// the environment once: the core's [`WorkerConfig`], the [`BrokerSettings`] and the outbox
/// relay's settings.
///
/// ```
/// use worker_rabbitmq::Settings;
///
/// let settings = Settings::from_vars([("WORKER_EXCHANGE", "orders"), ("WORKER_CONSUMER", "billing")])?;
/// assert_eq!(settings.broker.exchange, "orders");
/// assert_eq!(settings.worker.consumer, "billing");
/// # Ok::<(), worker_rabbitmq::ConfigError>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// What every transport shares: database, dedup, retries, batching, metrics.
    pub worker: WorkerConfig,
    /// How to reach the broker and name the topology.
    pub broker: BrokerSettings,
    /// The outbox relay's settings (`WORKER_OUTBOX_*`), used when a relay runs.
    pub outbox: OutboxSettings,
    /// `WORKER_OUTBOX`: `Some(true)` runs a relay in the worker, `Some(false)` never does, even
    /// when the code asks; `None` leaves it to the code.
    pub outbox_switch: Option<bool>,
}

impl Settings {
    /// Reads every variable from the process environment, once.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_variables(&Variables::from_env())
    }

    /// Reads every variable from these name/value pairs instead of the environment (tests,
    /// configuration files).
    pub fn from_vars<K: Into<String>, V: Into<String>>(
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self, ConfigError> {
        Self::from_variables(&Variables::new(vars))
    }

    /// Reads every variable from one snapshot.
    pub fn from_variables(vars: &Variables) -> Result<Self, ConfigError> {
        Ok(Self {
            worker: WorkerConfig::from_vars(vars)?,
            broker: BrokerSettings::from_vars(vars)?,
            outbox: OutboxSettings::from_vars(vars)?,
            outbox_switch: OutboxSettings::switch_from_vars(vars)?,
        })
    }
}

/// A heartbeat: whole seconds from 1 s to 65535 s (AMQP negotiates it in seconds, as a `u16`).
fn parse_heartbeat(value: &str) -> Result<Duration, String> {
    let duration = parse_duration(value)?;
    if duration.subsec_nanos() != 0 || duration.is_zero() || duration.as_secs() > 65_535 {
        return Err("expected whole seconds from 1s to 65535s".into());
    }
    Ok(duration)
}

fn parse_delivery_limit(value: &str) -> Result<Option<u32>, String> {
    if value.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    parse_positive(value)
        .map(Some)
        .map_err(|_| "expected a whole number of at least 1, or `off`".into())
}

fn parse_queue_type(value: &str) -> Result<QueueType, String> {
    match value {
        "quorum" => Ok(QueueType::Quorum),
        "classic" => Ok(QueueType::Classic),
        _ => Err("expected `quorum` or `classic`".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_are_whole_seconds() {
        assert_eq!(parse_heartbeat("2s"), Ok(Duration::from_secs(2)));
        assert!(parse_heartbeat("1500ms").is_err());
        assert!(parse_heartbeat("0s").is_err());
        assert!(parse_heartbeat("1d").is_err());
    }

    #[test]
    fn one_snapshot_fills_every_part() {
        let settings = Settings::from_vars([
            ("AMQP_URL", "amqp://u:p@broker:5672/%2f"),
            ("WORKER_QUEUE_TYPE", "classic"),
            ("WORKER_DELIVERY_LIMIT", "off"),
            ("WORKER_HEARTBEAT", "3s"),
            ("DATABASE_URL", "postgres://db/x"),
            ("WORKER_OUTBOX", "false"),
            ("WORKER_OUTBOX_BATCH_SIZE", "7"),
        ])
        .expect("valid settings");
        assert_eq!(settings.broker.url, "amqp://u:p@broker:5672/%2f");
        assert_eq!(settings.broker.queue_type, QueueType::Classic);
        assert_eq!(settings.broker.delivery_limit, None);
        assert_eq!(settings.broker.heartbeat, Duration::from_secs(3));
        assert_eq!(settings.worker.database_url, "postgres://db/x");
        assert_eq!(settings.outbox_switch, Some(false));
        assert_eq!(settings.outbox.batch_size, 7);
        assert_eq!(
            settings.broker.exchange, "events",
            "unset keeps the default"
        );
    }

    #[test]
    fn a_bad_broker_value_names_its_variable() {
        let error = Settings::from_vars([("WORKER_QUEUE_TYPE", "stream")]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "WORKER_QUEUE_TYPE=\"stream\" is invalid: expected `quorum` or `classic`"
        );
    }
}
