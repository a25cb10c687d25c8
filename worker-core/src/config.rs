//! Worker configuration: from the environment (and builder calls), never from code edits.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `AMQP_URL` | `amqp://guest:guest@127.0.0.1:5672/%2f` | broker |
//! | `WORKER_AMQP_CA_FILE` | unset | `amqps://`: PEM file of CA certificates to trust besides the system's |
//! | `WORKER_AMQP_CLIENT_IDENTITY`, `WORKER_AMQP_CLIENT_IDENTITY_PASSWORD` | unset | `amqps://`: client certificate and key as a PKCS#12 file, and its password |
//! | `WORKER_HEARTBEAT` | `10s` | AMQP heartbeat asked for (whole seconds) unless the URL sets `heartbeat=`; a silent connection is given up after about twice this |
//! | `DATABASE_URL` | `postgres://postgres@127.0.0.1:5432/postgres` | database |
//! | `WORKER_EXCHANGE` | `events` | topic exchange producers publish to |
//! | `WORKER_QUEUE_PREFIX` | empty | prepended to every queue name (isolates test runs) |
//! | `WORKER_QUEUE_TYPE` | `quorum` | work queue type: `quorum` or `classic` |
//! | `WORKER_DB_SCHEMA` | `public` | schema of `processed_events`, first on the `search_path` of handler connections |
//! | `WORKER_MIGRATE` | `true` | bring the framework's tables up to date at start-up ([`crate::migrations`], recorded in `<schema>.worker_schema_migrations`), then run the application's migrations |
//! | `WORKER_DEDUP_RETENTION` | `7d` | dedup rows older than this are pruned |
//! | `WORKER_SHUTDOWN_TIMEOUT` | `30s` | how long in-flight deliveries may finish after a stop signal |
//! | `WORKER_DB_POOL_SIZE` | `64` | most database connections; the pool is sized to what the handlers' concurrency needs (two per in-flight dedup delivery, one per other), up to this |
//! | `WORKER_CONSUMER` | the executable's name | `consumer` in dead-letter records |
//! | `WORKER_METRICS_ADDR` | `0.0.0.0:9464` | where `/metrics`, `/healthz`, `/readyz` are served; `off` turns the endpoint off |
//! | `WORKER_MAX_PAYLOAD_BYTES` | `4194304` (4 MiB) | larger message bodies are dead-lettered as poison without being decoded |
//! | `WORKER_DELIVERY_LIMIT` | `20` | quorum work queues: deliveries after which the broker dead-letters a message that was never settled (crash loop); `off` for none |
//! | `WORKER_BATCH_SIZE` | half the handler's concurrency, at most 50 | dedup handlers: most deliveries processed in one transaction (a savepoint each) when they are ready together, with up to 8 such transactions per handler at once; `1` turns batching off |
//! | `WORKER_BATCH_LINGER` | `0ms` | how long a batch waits for more deliveries after its first; `0ms` never waits, so batches form only from a backlog |
//! | `WORKER_LAG_POLL_INTERVAL` | `15s` | how often queue depths (lag, retry, DLQ) are read from the broker |
//! | `WORKER_RETRY_ATTEMPTS`, `_BASE`, `_CAP`, `_JITTER` | from `#[handler]` | override every handler's retry policy |
//! | `WORKER_HANDLER_<NAME>_RETRY_ATTEMPTS` (`_BASE`, `_CAP`, `_JITTER`), `WORKER_HANDLER_<NAME>_CONCURRENCY` | | override one handler (`<NAME>`: the handler name upper-cased, `-` → `_`) |
//!
//! Durations are a whole number and a unit, `ms`, `s`, `m`, `h` or `d` (`250ms`, `2s`, `5m`,
//! `1h`, `7d`), or several such terms from the largest unit down (`1h30m`); no fractions, no
//! spaces inside. It is the one grammar of the framework: `#[handler(cap = "1h")]` reads the same
//! (see [`parse_duration`]). Precedence, highest first: the handler's variables, the global
//! variables, the `#[handler]` attribute, the defaults.

use std::collections::HashMap;
use std::time::Duration;

use crate::dedup::identifier::{Identifier, InvalidIdentifier};
use crate::handler::HandlerSpec;

/// Default broker URL.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// Default database URL.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Largest default batch: Postgres keeps 64 subtransactions (savepoints that wrote) per
/// transaction in its fast path, and a batch uses one per event.
pub const MAX_DEFAULT_BATCH_SIZE: usize = 50;

/// A configuration value that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A variable holds a value of the wrong form.
    #[error("{var}={value:?} is invalid: {reason}")]
    Invalid {
        /// The variable (or setting) name.
        var: String,
        /// Its value.
        value: String,
        /// What was expected.
        reason: String,
    },
    /// The schema name is not a plain SQL identifier.
    #[error("WORKER_DB_SCHEMA: {0}")]
    Schema(#[from] InvalidIdentifier),
}

/// The type of the work queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueType {
    /// Replicated, cluster-ready (the default).
    #[default]
    Quorum,
    /// Classic durable queues.
    Classic,
}

/// A secret setting: never printed (its `Debug` shows `***`).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// TLS for `amqps://` broker URLs (rustls). The system's root certificates are trusted, plus
/// `ca_file` when set; a client certificate is presented when `client_identity` is set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AmqpTls {
    /// PEM file of extra CA certificates to trust (`WORKER_AMQP_CA_FILE`).
    pub ca_file: Option<std::path::PathBuf>,
    /// PKCS#12 (`.p12`) file with the client certificate and key (`WORKER_AMQP_CLIENT_IDENTITY`).
    pub client_identity: Option<std::path::PathBuf>,
    /// Password of the PKCS#12 file (`WORKER_AMQP_CLIENT_IDENTITY_PASSWORD`).
    pub client_identity_password: Option<Secret>,
}

/// Overrides of a retry policy; `None` keeps what the handler declares.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryOverrides {
    /// Attempts in total.
    pub max_attempts: Option<u32>,
    /// Delay after the first failure.
    pub base: Option<Duration>,
    /// Cap of the exponential part.
    pub cap: Option<Duration>,
    /// Maximum random jitter.
    pub jitter: Option<Duration>,
}

impl RetryOverrides {
    fn apply(&self, spec: &mut HandlerSpec) {
        let retry = &mut spec.retry;
        retry.max_attempts = self.max_attempts.unwrap_or(retry.max_attempts);
        retry.base = self.base.unwrap_or(retry.base);
        retry.cap = self.cap.unwrap_or(retry.cap);
        retry.jitter = self.jitter.unwrap_or(retry.jitter);
    }

    fn from_env(prefix: &str) -> Result<Self, ConfigError> {
        Ok(Self {
            max_attempts: env_parse(&format!("{prefix}RETRY_ATTEMPTS"), parse_positive)?,
            base: env_parse(&format!("{prefix}RETRY_BASE"), parse_duration)?,
            cap: env_parse(&format!("{prefix}RETRY_CAP"), parse_duration)?,
            jitter: env_parse(&format!("{prefix}RETRY_JITTER"), parse_duration)?,
        })
    }
}

/// Overrides for one handler.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HandlerOverrides {
    /// Its retry policy.
    pub retry: RetryOverrides,
    /// Its in-flight limit.
    pub concurrency: Option<usize>,
}

/// Everything a worker is configured with.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Broker URL (may hold credentials: log it with [`redact_url`]).
    pub amqp_url: String,
    /// TLS settings for `amqps://` URLs.
    pub amqp_tls: AmqpTls,
    /// AMQP heartbeat asked for, in whole seconds (a `heartbeat=` in the URL wins). A connection
    /// on which nothing arrives for about twice this long is given up and replaced.
    pub heartbeat: Duration,
    /// Database URL (may hold credentials: log it with [`redact_url`]).
    pub database_url: String,
    /// The topic exchange producers publish to.
    pub exchange: String,
    /// Prepended to every queue name.
    pub queue_prefix: String,
    /// Type of the work queues.
    pub queue_type: QueueType,
    /// Schema of the dedup table.
    pub db_schema: Identifier,
    /// Whether to run the framework's versioned migrations (and the application's) at start-up.
    pub migrate: bool,
    /// Age after which dedup rows are pruned.
    pub dedup_retention: Duration,
    /// Grace period for in-flight deliveries at shutdown.
    pub shutdown_timeout: Duration,
    /// Database connections.
    pub db_pool_size: u32,
    /// `consumer` in dead-letter records.
    pub consumer: String,
    /// Where the metrics and health endpoint listens; `None`: no endpoint.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// How often queue depths are polled.
    pub lag_poll_interval: Duration,
    /// Largest accepted message body; larger ones are dead-lettered as poison.
    pub max_payload_bytes: usize,
    /// Quorum work queues' `x-delivery-limit`: deliveries after which the broker dead-letters a
    /// message that never got settled (a crash loop); `None`: no limit.
    pub delivery_limit: Option<u32>,
    /// Dedup handlers: most deliveries in one batched transaction; `None`: half the handler's
    /// concurrency, at most [`MAX_DEFAULT_BATCH_SIZE`] (see [`WorkerConfig::batch_size_for`]).
    pub batch_size: Option<usize>,
    /// How long a batch waits for more deliveries after its first (zero: never).
    pub batch_linger: Duration,
    /// Overrides for every handler.
    pub retry: RetryOverrides,
    /// Overrides per handler name (set in code or tests; applied after `retry`).
    pub handlers: HashMap<String, HandlerOverrides>,
    /// Whether `WORKER_HANDLER_<NAME>_*` variables are read when a handler is resolved.
    pub read_handler_env: bool,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            amqp_url: DEFAULT_AMQP_URL.into(),
            amqp_tls: AmqpTls::default(),
            heartbeat: Duration::from_secs(10),
            database_url: DEFAULT_DATABASE_URL.into(),
            exchange: "events".into(),
            queue_prefix: String::new(),
            queue_type: QueueType::Quorum,
            db_schema: Identifier::new("public").expect("`public` is a valid identifier"),
            migrate: true,
            dedup_retention: Duration::from_secs(7 * 24 * 3600),
            shutdown_timeout: Duration::from_secs(30),
            db_pool_size: 64,
            consumer: default_consumer(),
            metrics_addr: Some(std::net::SocketAddr::from(([0, 0, 0, 0], 9464))),
            lag_poll_interval: Duration::from_secs(15),
            max_payload_bytes: 4 * 1024 * 1024,
            delivery_limit: Some(20),
            batch_size: None,
            batch_linger: Duration::ZERO,
            retry: RetryOverrides::default(),
            handlers: HashMap::new(),
            read_handler_env: false,
        }
    }
}

impl WorkerConfig {
    /// Reads the variables in the module docs; unset ones keep their defaults.
    pub fn from_env() -> Result<Self, ConfigError> {
        let defaults = Self::default();
        Ok(Self {
            amqp_url: env_string("AMQP_URL").unwrap_or(defaults.amqp_url),
            amqp_tls: AmqpTls {
                ca_file: env_string("WORKER_AMQP_CA_FILE").map(Into::into),
                client_identity: env_string("WORKER_AMQP_CLIENT_IDENTITY").map(Into::into),
                client_identity_password: env_string("WORKER_AMQP_CLIENT_IDENTITY_PASSWORD")
                    .map(Secret),
            },
            heartbeat: env_parse("WORKER_HEARTBEAT", parse_heartbeat)?
                .unwrap_or(defaults.heartbeat),
            database_url: env_string("DATABASE_URL").unwrap_or(defaults.database_url),
            exchange: env_string("WORKER_EXCHANGE").unwrap_or(defaults.exchange),
            queue_prefix: env_string("WORKER_QUEUE_PREFIX").unwrap_or(defaults.queue_prefix),
            queue_type: env_parse("WORKER_QUEUE_TYPE", parse_queue_type)?
                .unwrap_or(defaults.queue_type),
            db_schema: match env_string("WORKER_DB_SCHEMA") {
                Some(schema) => Identifier::new(&schema)?,
                None => defaults.db_schema,
            },
            migrate: env_parse("WORKER_MIGRATE", parse_bool)?.unwrap_or(defaults.migrate),
            dedup_retention: env_parse("WORKER_DEDUP_RETENTION", parse_duration)?
                .unwrap_or(defaults.dedup_retention),
            shutdown_timeout: env_parse("WORKER_SHUTDOWN_TIMEOUT", parse_duration)?
                .unwrap_or(defaults.shutdown_timeout),
            db_pool_size: env_parse("WORKER_DB_POOL_SIZE", parse_positive)?
                .unwrap_or(defaults.db_pool_size),
            consumer: env_string("WORKER_CONSUMER").unwrap_or(defaults.consumer),
            metrics_addr: env_parse("WORKER_METRICS_ADDR", parse_metrics_addr)?
                .unwrap_or(defaults.metrics_addr),
            lag_poll_interval: env_parse("WORKER_LAG_POLL_INTERVAL", parse_duration)?
                .unwrap_or(defaults.lag_poll_interval),
            max_payload_bytes: env_parse("WORKER_MAX_PAYLOAD_BYTES", parse_positive)?
                .unwrap_or(defaults.max_payload_bytes),
            delivery_limit: env_parse("WORKER_DELIVERY_LIMIT", parse_delivery_limit)?
                .unwrap_or(defaults.delivery_limit),
            batch_size: env_parse("WORKER_BATCH_SIZE", parse_positive)?.or(defaults.batch_size),
            batch_linger: env_parse("WORKER_BATCH_LINGER", parse_duration)?
                .unwrap_or(defaults.batch_linger),
            retry: RetryOverrides::from_env("WORKER_")?,
            handlers: HashMap::new(),
            read_handler_env: true,
        })
    }

    /// The spec a handler runs with: its declaration with the overrides applied, validated.
    pub fn resolve(&self, declared: &HandlerSpec) -> Result<HandlerSpec, ConfigError> {
        let mut spec = declared.clone();
        self.retry.apply(&mut spec);
        let mut overrides = self.handlers.get(spec.name).copied().unwrap_or_default();
        if self.read_handler_env {
            let prefix = handler_env_prefix(spec.name);
            let env_retry = RetryOverrides::from_env(&prefix)?;
            let env_concurrency = env_parse(&format!("{prefix}CONCURRENCY"), parse_positive)?;
            overrides.retry = RetryOverrides {
                max_attempts: env_retry.max_attempts.or(overrides.retry.max_attempts),
                base: env_retry.base.or(overrides.retry.base),
                cap: env_retry.cap.or(overrides.retry.cap),
                jitter: env_retry.jitter.or(overrides.retry.jitter),
            };
            overrides.concurrency = env_concurrency
                .map(|c: u32| c as usize)
                .or(overrides.concurrency);
        }
        overrides.retry.apply(&mut spec);
        spec.concurrency = overrides.concurrency.unwrap_or(spec.concurrency);
        let invalid = |reason: &str| ConfigError::Invalid {
            var: format!("retry policy of `{}`", spec.name),
            value: format!("{:?}", spec.retry),
            reason: reason.into(),
        };
        if spec.retry.max_attempts == 0 {
            return Err(invalid("attempts must be at least 1"));
        }
        if spec.retry.base.is_zero() || spec.retry.cap < spec.retry.base {
            return Err(invalid("base must be positive and cap at least base"));
        }
        if spec.concurrency == 0 {
            return Err(invalid("concurrency must be at least 1"));
        }
        Ok(spec)
    }

    /// The most deliveries of a dedup handler with this `concurrency` that share a transaction:
    /// [`WorkerConfig::batch_size`], else half the concurrency (so one batch fills while the
    /// previous one commits) and at most [`MAX_DEFAULT_BATCH_SIZE`]; never above the concurrency.
    pub fn batch_size_for(&self, concurrency: usize) -> usize {
        let size = self
            .batch_size
            .unwrap_or((concurrency / 2).min(MAX_DEFAULT_BATCH_SIZE));
        size.clamp(1, concurrency.max(1))
    }

    /// The name of a handler's queues start with this: prefix + handler name.
    pub fn queue_name(&self, handler: &str) -> String {
        format!("{}{}", self.queue_prefix, handler)
    }
}

/// `WORKER_HANDLER_<NAME>_` for a handler name.
pub fn handler_env_prefix(handler: &str) -> String {
    let name: String = handler
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("WORKER_HANDLER_{name}_")
}

fn default_consumer() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|path| path.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "worker".into())
}

fn env_string(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.trim().is_empty())
}

fn env_parse<T>(var: &str, parse: fn(&str) -> Result<T, String>) -> Result<Option<T>, ConfigError> {
    env_string(var)
        .map(|value| parse_var(var, value, parse))
        .transpose()
}

/// Parses the value of `var`; the error names the variable and its value.
fn parse_var<T>(
    var: &str,
    value: String,
    parse: fn(&str) -> Result<T, String>,
) -> Result<T, ConfigError> {
    parse(value.trim()).map_err(|reason| ConfigError::Invalid {
        var: var.into(),
        value,
        reason,
    })
}

fn parse_bool(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

fn parse_positive<T: std::str::FromStr + PartialOrd + From<u8>>(value: &str) -> Result<T, String> {
    match value.parse::<T>() {
        Ok(n) if n >= T::from(1) => Ok(n),
        _ => Err("expected a whole number of at least 1".into()),
    }
}

fn parse_metrics_addr(value: &str) -> Result<Option<std::net::SocketAddr>, String> {
    if matches!(
        value.to_ascii_lowercase().as_str(),
        "off" | "false" | "0" | "none"
    ) {
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .map_err(|_| "expected host:port (e.g. 0.0.0.0:9464) or `off`".into())
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

/// Parses a duration: `250ms`, `2s`, `5m`, `1h`, `7d`, `1h30m` (the grammar of
/// [`worker_duration`], shared with the `#[handler]` attribute). The error says what is wrong and
/// what to write; [`ConfigError::Invalid`] adds the variable and its value.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    worker_duration::parse(value).map_err(|e| e.to_string())
}

/// The URL with its password replaced by `***`, for logs and errors.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rfind('@') {
        Some(at) => {
            let user_info = &authority[..at];
            let user = user_info.split(':').next().unwrap_or("");
            format!("{}{}:***@{}", &url[..scheme_end + 3], user, &rest[at + 1..])
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_heartbeat("2s"), Ok(Duration::from_secs(2)));
        assert!(parse_heartbeat("1500ms").is_err());
        assert!(parse_heartbeat("0s").is_err());
        assert!(parse_heartbeat("1d").is_err());
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3_600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5_400)));
        assert!(parse_duration("2").is_err());
        assert!(parse_duration("fast").is_err());
    }

    #[test]
    fn a_bad_duration_names_the_variable_and_the_accepted_forms() {
        let error = parse_var("WORKER_RETRY_CAP", "5 fortnights".into(), parse_duration)
            .expect_err("not a duration");
        let message = error.to_string();
        assert!(
            message.starts_with(
                "WORKER_RETRY_CAP=\"5 fortnights\" is invalid: unknown duration unit `fortnights`"
            ),
            "{message}"
        );
        for form in [
            "`ms`, `s`, `m`, `h` or `d`",
            "`250ms`",
            "`1h`",
            "`7d`",
            "`1h30m`",
        ] {
            assert!(message.contains(form), "{message} lacks {form}");
        }
    }

    #[test]
    fn redaction() {
        assert_eq!(
            redact_url("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1/db"),
            "postgres://postgres:***@127.0.0.1/db"
        );
        assert_eq!(redact_url("amqp://h:1/v"), "amqp://h:1/v");
        assert_eq!(redact_url("amqp://u:p@ss@h/v"), "amqp://u:***@h/v");
    }

    #[test]
    fn overrides_apply_in_order() {
        let mut config = WorkerConfig {
            retry: RetryOverrides {
                base: Some(Duration::from_millis(10)),
                ..Default::default()
            },
            ..Default::default()
        };
        config.handlers.insert(
            "h".into(),
            HandlerOverrides {
                retry: RetryOverrides {
                    max_attempts: Some(3),
                    ..Default::default()
                },
                concurrency: Some(2),
            },
        );
        let spec = config.resolve(&HandlerSpec::new("h", "E")).unwrap();
        assert_eq!(
            (spec.retry.base, spec.retry.max_attempts, spec.concurrency),
            (Duration::from_millis(10), 3, 2)
        );
        assert_eq!(
            handler_env_prefix("charge-on-order-placed"),
            "WORKER_HANDLER_CHARGE_ON_ORDER_PLACED_"
        );
    }
}
