//! Worker configuration: from the environment (and builder calls), never from code edits.
//!
//! The environment is read once, into a [`Variables`] snapshot, and parsed into typed settings:
//! [`WorkerConfig`] here (what every transport shares) and the transport's own settings (the
//! broker URL, TLS, heartbeat, exchange and queue names), which the transport crate documents.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `WORKER_APP` | the executable's name | the application's name: the default schema, queue prefix and `consumer` derive from it, so two applications on one database and one broker stay apart |
//! | `DATABASE_URL` | `postgres://postgres@127.0.0.1:5432/postgres` | database |
//! | `WORKER_DB_SCHEMA` | the application's name as an identifier (`order-worker` → `order_worker`) | schema of the framework's tables (`processed_events`, `outbox`, the migration records) and of the application's own migrations: first on the `search_path` of handler connections |
//! | `WORKER_MIGRATE` | `true` | bring the framework's tables up to date at start-up ([`crate::migrations`], recorded in `<schema>.worker_schema_migrations`), then run the application's migrations |
//! | `WORKER_DLQ_STORE` | `true` | move dead letters into the `dead_letters` table; the `dlq` commands read it (`false`: queue-only mode, dead letters stay in the queues) |
//! | `WORKER_DLQ_STORE_RETENTION` | `30d` | how long replayed and purged rows stay in the store |
//! | `WORKER_DEDUP_RETENTION` | `7d` | dedup rows older than this are pruned |
//! | `WORKER_SHUTDOWN_TIMEOUT` | `30s` | how long in-flight deliveries may finish after a stop signal |
//! | `WORKER_DB_POOL_SIZE` | `64` | most database connections; the pool is sized to what the handlers' concurrency needs (two per in-flight dedup delivery, one per other), up to this |
//! | `WORKER_CONSUMER` | the application's name | `consumer` in dead-letter records |
//! | `WORKER_METRICS_ADDR` | `0.0.0.0:9464` | where `/metrics`, `/healthz`, `/readyz` are served; `off` turns the endpoint off |
//! | `WORKER_MAX_PAYLOAD_BYTES` | `4194304` (4 MiB) | larger message bodies are dead-lettered as poison without being decoded |
//! | `WORKER_BATCH_SIZE` | half the handler's concurrency, at most 50 | dedup handlers: most deliveries processed in one transaction (a savepoint each) when they are ready together, with up to 8 such transactions per handler at once; `1` turns batching off |
//! | `WORKER_BATCH_LINGER` | `0ms` | how long a batch waits for more deliveries after its first; `0ms` never waits, so batches form only from a backlog |
//! | `WORKER_LAG_POLL_INTERVAL` | `15s` | how often queue depths (lag, retry, DLQ) are read from the broker |
//! | `WORKER_RETRY_ATTEMPTS`, `_BASE`, `_CAP`, `_JITTER` | from `#[handler]` | override every handler's retry policy |
//! | `WORKER_RETRY_AFTER_MAX` | `15m` | the longest wait a handler may ask for with `HandlerError::retry_after` (longer ones are cut to this) |
//! | `WORKER_BREAKER_FAILURES` | `10` (`#[handler(breaker = N)]`) | retryable failures in a row that open a handler's circuit breaker; `0` turns it off |
//! | `WORKER_BREAKER_PROBE`, `WORKER_BREAKER_MAX_PROBE` | `2s`, `60s` | how long an open breaker waits before its first probe delivery, and at most between probes (the wait doubles after each failed probe) |
//! | `WORKER_HANDLER_<NAME>_RETRY_ATTEMPTS` (`_BASE`, `_CAP`, `_JITTER`), `WORKER_HANDLER_<NAME>_CONCURRENCY`, `WORKER_HANDLER_<NAME>_BREAKER_FAILURES` (`_PROBE`, `_MAX_PROBE`) | | override one handler (`<NAME>`: the handler name upper-cased, `-` → `_`) |
//!
//! Durations are a whole number and a unit, `ms`, `s`, `m`, `h` or `d` (`250ms`, `2s`, `5m`,
//! `1h`, `7d`), or several such terms from the largest unit down (`1h30m`); no fractions, no
//! spaces inside. It is the one grammar of the framework: `#[handler(cap = "1h")]` reads the same
//! (see [`parse_duration`]). Precedence, highest first: the handler's variables, the global
//! variables, the `#[handler]` attribute, the defaults. A `WORKER_HANDLER_*` variable whose
//! setting is unknown (a typo such as `_CONCURENCY`) is an error, not silently ignored.

use std::collections::HashMap;
use std::time::Duration;

use crate::dedup::identifier::{Identifier, InvalidIdentifier};
use crate::handler::HandlerSpec;

/// Default database URL.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Largest default batch: Postgres keeps 64 subtransactions (savepoints that wrote) per
/// transaction in its fast path, and a batch uses one per event.
pub const MAX_DEFAULT_BATCH_SIZE: usize = 50;

/// The default of [`WorkerConfig::max_retry_after`]: 15 minutes.
pub const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(15 * 60);

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

/// A secret setting: never printed (its `Debug` shows `***`).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
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

    fn from_vars(vars: &Variables, prefix: &str) -> Result<Self, ConfigError> {
        Ok(Self {
            max_attempts: vars.parse(&format!("{prefix}RETRY_ATTEMPTS"), parse_positive)?,
            base: vars.parse(&format!("{prefix}RETRY_BASE"), parse_duration)?,
            cap: vars.parse(&format!("{prefix}RETRY_CAP"), parse_duration)?,
            jitter: vars.parse(&format!("{prefix}RETRY_JITTER"), parse_duration)?,
        })
    }

    /// These overrides, with `self`'s values winning where both are set.
    fn or(self, other: Self) -> Self {
        Self {
            max_attempts: self.max_attempts.or(other.max_attempts),
            base: self.base.or(other.base),
            cap: self.cap.or(other.cap),
            jitter: self.jitter.or(other.jitter),
        }
    }
}

/// Overrides of a circuit breaker; `None` keeps what the handler declares.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BreakerOverrides {
    /// Retryable failures in a row that open it (`0`: off).
    pub failures: Option<u32>,
    /// The wait before the first probe.
    pub probe: Option<Duration>,
    /// The longest wait between probes.
    pub max_probe: Option<Duration>,
}

impl BreakerOverrides {
    fn apply(&self, spec: &mut HandlerSpec) {
        let breaker = &mut spec.breaker;
        breaker.failures = self.failures.unwrap_or(breaker.failures);
        breaker.probe = self.probe.unwrap_or(breaker.probe);
        breaker.max_probe = self.max_probe.unwrap_or(breaker.max_probe);
    }

    fn from_vars(vars: &Variables, prefix: &str) -> Result<Self, ConfigError> {
        let count = |value: &str| {
            value
                .parse::<u32>()
                .map_err(|_| "expected a whole number (0 turns the breaker off)".to_owned())
        };
        Ok(Self {
            failures: vars.parse(&format!("{prefix}BREAKER_FAILURES"), count)?,
            probe: vars.parse(&format!("{prefix}BREAKER_PROBE"), parse_duration)?,
            max_probe: vars.parse(&format!("{prefix}BREAKER_MAX_PROBE"), parse_duration)?,
        })
    }

    /// These overrides, with `self`'s values winning where both are set.
    fn or(self, other: Self) -> Self {
        Self {
            failures: self.failures.or(other.failures),
            probe: self.probe.or(other.probe),
            max_probe: self.max_probe.or(other.max_probe),
        }
    }
}

/// Overrides for one handler.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HandlerOverrides {
    /// Its retry policy.
    pub retry: RetryOverrides,
    /// Its in-flight limit.
    pub concurrency: Option<usize>,
    /// Its circuit breaker.
    pub breaker: BreakerOverrides,
}

/// Everything a worker is configured with that does not depend on the transport.
///
/// Its `Debug` shows the database URL without its password ([`redact_url`]).
#[derive(Clone)]
pub struct WorkerConfig {
    /// The application's name (`WORKER_APP`); [`WorkerConfig::for_app`] derives the schema and
    /// the consumer from it, and the transport its queue prefix.
    pub app: String,
    /// Database URL (may hold credentials: log it with [`redact_url`]).
    pub database_url: String,
    /// Schema of the framework's tables, first on the handlers' `search_path`.
    pub db_schema: Identifier,
    /// Whether to run the framework's versioned migrations (and the application's) at start-up.
    pub migrate: bool,
    /// Whether dead letters go on into the dead-letter store (`WORKER_DLQ_STORE=on`): the worker
    /// moves them from the dead-letter queues into the `dead_letters` table and the `dlq`
    /// commands read that table. On by default; off (`WORKER_DLQ_STORE=off`) is queue-only
    /// mode: the dead letters stay in the queues and the commands read them there.
    pub dlq_store: bool,
    /// How long replayed and purged rows stay in the dead-letter store (pending ones stay until
    /// an operator acts).
    pub dlq_store_retention: Duration,
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
    /// Dedup handlers: most deliveries in one batched transaction; `None`: half the handler's
    /// concurrency, at most [`MAX_DEFAULT_BATCH_SIZE`] (see [`WorkerConfig::batch_size_for`]).
    pub batch_size: Option<usize>,
    /// How long a batch waits for more deliveries after its first (zero: never).
    pub batch_linger: Duration,
    /// Overrides for every handler.
    pub retry: RetryOverrides,
    /// Overrides of every handler's circuit breaker.
    pub breaker: BreakerOverrides,
    /// The longest wait a handler may ask for with
    /// [`HandlerError::retry_after`](crate::HandlerError::retry_after).
    pub max_retry_after: Duration,
    /// Overrides per handler name, set in code or tests (applied after `retry`).
    pub handlers: HashMap<String, HandlerOverrides>,
    /// Overrides from `WORKER_HANDLER_<NAME>_*` variables, keyed by `<NAME>` (see
    /// [`handler_env_name`]); they win over [`WorkerConfig::handlers`].
    pub handler_vars: HashMap<String, HandlerOverrides>,
}

/// Written out rather than derived: the URL goes through [`redact_url`], and the exhaustive
/// pattern makes a new field a compile error here, so none is printed unchecked.
impl std::fmt::Debug for WorkerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            app,
            database_url,
            db_schema,
            migrate,
            dlq_store,
            dlq_store_retention,
            dedup_retention,
            shutdown_timeout,
            db_pool_size,
            consumer,
            metrics_addr,
            lag_poll_interval,
            max_payload_bytes,
            batch_size,
            batch_linger,
            retry,
            breaker,
            max_retry_after,
            handlers,
            handler_vars,
        } = self;
        f.debug_struct("WorkerConfig")
            .field("app", app)
            .field("database_url", &RedactedUrl(database_url))
            .field("db_schema", db_schema)
            .field("migrate", migrate)
            .field("dlq_store", dlq_store)
            .field("dlq_store_retention", dlq_store_retention)
            .field("dedup_retention", dedup_retention)
            .field("shutdown_timeout", shutdown_timeout)
            .field("db_pool_size", db_pool_size)
            .field("consumer", consumer)
            .field("metrics_addr", metrics_addr)
            .field("lag_poll_interval", lag_poll_interval)
            .field("max_payload_bytes", max_payload_bytes)
            .field("batch_size", batch_size)
            .field("batch_linger", batch_linger)
            .field("retry", retry)
            .field("breaker", breaker)
            .field("max_retry_after", max_retry_after)
            .field("handlers", handlers)
            .field("handler_vars", handler_vars)
            .finish()
    }
}

/// The neutral defaults for a configuration built in code (tests, the test harness): schema
/// `public`. A worker process reads [`WorkerConfig::from_env`] instead, whose defaults come
/// from the application's name ([`WorkerConfig::for_app`]).
impl Default for WorkerConfig {
    fn default() -> Self {
        let app = default_app();
        Self {
            database_url: DEFAULT_DATABASE_URL.into(),
            db_schema: Identifier::new("public").expect("`public` is a valid identifier"),
            migrate: true,
            dlq_store: true,
            dlq_store_retention: Duration::from_secs(30 * 24 * 3600),
            dedup_retention: Duration::from_secs(7 * 24 * 3600),
            shutdown_timeout: Duration::from_secs(30),
            db_pool_size: 64,
            consumer: app.clone(),
            app,
            metrics_addr: Some(std::net::SocketAddr::from(([0, 0, 0, 0], 9464))),
            lag_poll_interval: Duration::from_secs(15),
            max_payload_bytes: 4 * 1024 * 1024,
            batch_size: None,
            batch_linger: Duration::ZERO,
            retry: RetryOverrides::default(),
            breaker: BreakerOverrides::default(),
            max_retry_after: DEFAULT_MAX_RETRY_AFTER,
            handlers: HashMap::new(),
            handler_vars: HashMap::new(),
        }
    }
}

impl WorkerConfig {
    /// Reads the variables in the module docs from the environment; unset ones keep their
    /// defaults. A transport reads its own settings from the same [`Variables`] with
    /// [`WorkerConfig::from_vars`].
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(&Variables::from_env())
    }

    /// The defaults of application `app`: its tables in the schema named after it
    /// ([`Identifier::from_name`]) and `app` as the consumer, so that two applications sharing
    /// one database never share a table.
    ///
    /// ```
    /// use worker_core::WorkerConfig;
    ///
    /// let config = WorkerConfig::for_app("order-worker");
    /// assert_eq!(config.db_schema.as_str(), "order_worker");
    /// assert_eq!(config.consumer, "order-worker");
    /// ```
    pub fn for_app(app: &str) -> Self {
        Self {
            app: app.to_owned(),
            db_schema: Identifier::from_name(app),
            consumer: app.to_owned(),
            ..Self::default()
        }
    }

    /// Reads the variables in the module docs from `vars`; unset ones keep the defaults of the
    /// application ([`app_name`], [`WorkerConfig::for_app`]).
    pub fn from_vars(vars: &Variables) -> Result<Self, ConfigError> {
        let defaults = Self::for_app(&app_name(vars)?);
        Ok(Self {
            app: defaults.app.clone(),
            database_url: vars.string("DATABASE_URL").unwrap_or(defaults.database_url),
            db_schema: match vars.string("WORKER_DB_SCHEMA") {
                Some(schema) => Identifier::new(&schema)?,
                None => defaults.db_schema,
            },
            migrate: vars
                .parse("WORKER_MIGRATE", parse_bool)?
                .unwrap_or(defaults.migrate),
            dlq_store: vars
                .parse("WORKER_DLQ_STORE", parse_bool)?
                .unwrap_or(defaults.dlq_store),
            dlq_store_retention: vars
                .parse("WORKER_DLQ_STORE_RETENTION", parse_duration)?
                .unwrap_or(defaults.dlq_store_retention),
            dedup_retention: vars
                .parse("WORKER_DEDUP_RETENTION", parse_duration)?
                .unwrap_or(defaults.dedup_retention),
            shutdown_timeout: vars
                .parse("WORKER_SHUTDOWN_TIMEOUT", parse_duration)?
                .unwrap_or(defaults.shutdown_timeout),
            db_pool_size: vars
                .parse("WORKER_DB_POOL_SIZE", parse_positive)?
                .unwrap_or(defaults.db_pool_size),
            consumer: vars.string("WORKER_CONSUMER").unwrap_or(defaults.consumer),
            metrics_addr: vars
                .parse("WORKER_METRICS_ADDR", parse_metrics_addr)?
                .unwrap_or(defaults.metrics_addr),
            lag_poll_interval: vars
                .parse("WORKER_LAG_POLL_INTERVAL", parse_duration)?
                .unwrap_or(defaults.lag_poll_interval),
            max_payload_bytes: vars
                .parse("WORKER_MAX_PAYLOAD_BYTES", parse_positive)?
                .unwrap_or(defaults.max_payload_bytes),
            batch_size: vars
                .parse("WORKER_BATCH_SIZE", parse_positive)?
                .or(defaults.batch_size),
            batch_linger: vars
                .parse("WORKER_BATCH_LINGER", parse_duration)?
                .unwrap_or(defaults.batch_linger),
            retry: RetryOverrides::from_vars(vars, "WORKER_")?,
            breaker: BreakerOverrides::from_vars(vars, "WORKER_")?,
            max_retry_after: vars
                .parse("WORKER_RETRY_AFTER_MAX", parse_duration)?
                .unwrap_or(defaults.max_retry_after),
            handlers: HashMap::new(),
            handler_vars: handler_vars(vars)?,
        })
    }

    /// The spec a handler runs with: its declaration with the overrides applied, validated.
    pub fn resolve(&self, declared: &HandlerSpec) -> Result<HandlerSpec, ConfigError> {
        let mut spec = declared.clone();
        self.retry.apply(&mut spec);
        self.breaker.apply(&mut spec);
        let code = self.handlers.get(spec.name).copied().unwrap_or_default();
        let vars = self
            .handler_vars
            .get(&handler_env_name(spec.name))
            .copied()
            .unwrap_or_default();
        let overrides = HandlerOverrides {
            retry: vars.retry.or(code.retry),
            concurrency: vars.concurrency.or(code.concurrency),
            breaker: vars.breaker.or(code.breaker),
        };
        overrides.retry.apply(&mut spec);
        overrides.breaker.apply(&mut spec);
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
        if spec.breaker.enabled()
            && (spec.breaker.probe.is_zero() || spec.breaker.max_probe < spec.breaker.probe)
        {
            return Err(ConfigError::Invalid {
                var: format!("circuit breaker of `{}`", spec.name),
                value: format!("{:?}", spec.breaker),
                reason:
                    "the probe wait must be positive and the longest probe wait at least the first"
                        .into(),
            });
        }
        Ok(spec)
    }

    /// The `WORKER_HANDLER_<NAME>_*` variables that name none of these handlers (a typo in a
    /// name, or a handler that was removed), for a start-up warning.
    pub fn unknown_handler_vars(&self, handlers: &[&str]) -> Vec<String> {
        let known: Vec<String> = handlers.iter().map(|h| handler_env_name(h)).collect();
        let mut unknown: Vec<String> = self
            .handler_vars
            .keys()
            .filter(|name| !known.contains(name))
            .map(|name| format!("WORKER_HANDLER_{name}_*"))
            .collect();
        unknown.sort();
        unknown
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
}

/// A snapshot of the environment (or of any name → value list, in tests), read once and shared
/// by every part of the configuration. Blank values count as unset.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Variables(HashMap<String, String>);

impl std::fmt::Debug for Variables {
    /// Names only: values may be secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&String> = self.0.keys().collect();
        names.sort();
        f.debug_tuple("Variables").field(&names).finish()
    }
}

impl Variables {
    /// The process environment, now.
    pub fn from_env() -> Self {
        Self::new(std::env::vars())
    }

    /// These variables.
    pub fn new<K: Into<String>, V: Into<String>>(vars: impl IntoIterator<Item = (K, V)>) -> Self {
        Self(
            vars.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .filter(|(_, v)| !v.trim().is_empty())
                .collect(),
        )
    }

    /// The value of `var`, if set and not blank.
    pub fn string(&self, var: &str) -> Option<String> {
        self.0.get(var).cloned()
    }

    /// The value of `var` parsed by `parse`; the error names the variable and its value.
    pub fn parse<T>(
        &self,
        var: &str,
        parse: fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        self.string(var)
            .map(|value| parse_var(var, value, parse))
            .transpose()
    }

    /// The names of the variables that start with `prefix`, sorted.
    pub fn names_starting_with(&self, prefix: &str) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .0
            .keys()
            .map(String::as_str)
            .filter(|name| name.starts_with(prefix))
            .collect();
        names.sort_unstable();
        names
    }
}

/// The settings a `WORKER_HANDLER_<NAME>_` variable can end with.
const HANDLER_SETTINGS: [&str; 8] = [
    "RETRY_ATTEMPTS",
    "RETRY_BASE",
    "RETRY_CAP",
    "RETRY_JITTER",
    "CONCURRENCY",
    "BREAKER_MAX_PROBE",
    "BREAKER_PROBE",
    "BREAKER_FAILURES",
];

/// Every `WORKER_HANDLER_<NAME>_<SETTING>` variable, parsed, keyed by `<NAME>`.
fn handler_vars(vars: &Variables) -> Result<HashMap<String, HandlerOverrides>, ConfigError> {
    let mut names: Vec<&str> = Vec::new();
    for var in vars.names_starting_with("WORKER_HANDLER_") {
        let rest = &var["WORKER_HANDLER_".len()..];
        let name = HANDLER_SETTINGS
            .iter()
            .find_map(|setting| rest.strip_suffix(setting)?.strip_suffix('_'))
            .filter(|name| !name.is_empty())
            .ok_or_else(|| ConfigError::Invalid {
                var: var.into(),
                value: vars.string(var).unwrap_or_default(),
                reason: format!(
                    "not a handler setting: expected WORKER_HANDLER_<NAME>_ followed by one of {}",
                    HANDLER_SETTINGS.join(", ")
                ),
            })?;
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
        .into_iter()
        .map(|name| {
            let prefix = format!("WORKER_HANDLER_{name}_");
            let overrides = HandlerOverrides {
                retry: RetryOverrides::from_vars(vars, &prefix)?,
                concurrency: vars.parse(&format!("{prefix}CONCURRENCY"), parse_positive)?,
                breaker: BreakerOverrides::from_vars(vars, &prefix)?,
            };
            Ok((name.to_owned(), overrides))
        })
        .collect()
}

/// `<NAME>` of the `WORKER_HANDLER_<NAME>_*` variables of a handler: its name upper-cased, every
/// other character than a letter or digit replaced by `_`.
pub fn handler_env_name(handler: &str) -> String {
    handler
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// The application's name: `WORKER_APP`, or the executable's name. It must be 1-100 ASCII
/// letters, digits, `-`, `_` or `.` (it prefixes queue names); characters of the executable's
/// name outside that set become `-`.
pub fn app_name(vars: &Variables) -> Result<String, ConfigError> {
    match vars.string("WORKER_APP") {
        Some(app) => {
            let valid = !app.is_empty()
                && app.len() <= 100
                && app
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if valid {
                Ok(app)
            } else {
                Err(ConfigError::Invalid {
                    var: "WORKER_APP".into(),
                    value: app,
                    reason: "expected 1-100 ASCII letters, digits, `-`, `_` or `.`".into(),
                })
            }
        }
        None => Ok(default_app()),
    }
}

fn default_app() -> String {
    let stem = std::env::current_exe()
        .ok()
        .and_then(|path| path.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let app: String = stem
        .chars()
        .take(100)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    if app.is_empty() {
        "worker".into()
    } else {
        app
    }
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

/// `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`).
pub fn parse_bool(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

/// A whole number of at least 1.
pub fn parse_positive<T: std::str::FromStr + PartialOrd + From<u8>>(
    value: &str,
) -> Result<T, String> {
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

/// Parses a duration: `250ms`, `2s`, `5m`, `1h`, `7d`, `1h30m` (the grammar of
/// [`worker_duration`], shared with the `#[handler]` attribute). The error says what is wrong and
/// what to write; [`ConfigError::Invalid`] adds the variable and its value.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    worker_duration::parse(value).map_err(|e| e.to_string())
}

/// Writes a duration as [`parse_duration`] reads it: `7d`, `1h30m`, `250ms`.
pub fn format_duration(duration: Duration) -> String {
    worker_duration::format(duration)
}

/// The URL with its passwords replaced by `***`, for logs, errors and `Debug`: the userinfo's
/// (`scheme://user:***@host`, also written when the URL names a user without a password, so
/// the output does not tell which) and the value of every query parameter whose name suggests a
/// secret (`?password=***`, `sslpassword`, `passphrase`, `token`, `secret`; matched without
/// case, after percent-decoding the name, as the drivers read it).
///
/// ```
/// use worker_core::transport::config::redact_url;
///
/// assert_eq!(
///     redact_url("postgres://app:s3cret@db:5432/orders?sslmode=require&password=other"),
///     "postgres://app:***@db:5432/orders?sslmode=require&password=***"
/// );
/// ```
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return redact_query(url);
    };
    let (scheme, rest) = url.split_at(scheme_end + 3);
    // The userinfo ends at the last `@` before the path. A `?` or `#` in a password should be
    // percent-encoded, but generated passwords often hold them raw (the URL then fails to
    // parse, and the error must not show it): they count as part of the password here.
    let path_start = rest.find('/').unwrap_or(rest.len());
    let (user, host_and_tail) = match rest[..path_start].rfind('@') {
        Some(at) => {
            let user = rest[..at].split(':').next().unwrap_or("");
            (format!("{user}:***@"), &rest[at + 1..])
        }
        None => (String::new(), rest),
    };
    let authority_end = host_and_tail
        .find(['/', '?', '#'])
        .unwrap_or(host_and_tail.len());
    let (host, tail) = host_and_tail.split_at(authority_end);
    format!("{scheme}{user}{host}{}", redact_query(tail))
}

/// `tail` (path, query, fragment) with the values of secret-looking query parameters masked.
fn redact_query(tail: &str) -> String {
    let Some(query_start) = tail.find('?') else {
        return tail.to_owned();
    };
    let (path, query) = tail.split_at(query_start + 1);
    let (query, fragment) = match query.find('#') {
        Some(hash) => query.split_at(hash),
        None => (query, ""),
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if is_secret_name(key) => format!("{key}=***"),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{path}{}{fragment}", pairs.join("&"))
}

/// Whether a query parameter named `key` (percent-encoded) may hold a secret.
fn is_secret_name(key: &str) -> bool {
    let name = percent_decode(key).to_ascii_lowercase();
    ["pass", "pwd", "secret", "token"]
        .iter()
        .any(|word| name.contains(word))
}

/// `%XX` sequences decoded and `+` read as a space, as URL query parsers read names.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A URL that formats (`Debug` and `Display`) as [`redact_url`] writes it: for `Debug` impls and
/// log fields of settings that hold a URL.
///
/// ```
/// use worker_core::transport::config::RedactedUrl;
///
/// let url = "postgres://guest:guest@127.0.0.1:5672/%2f";
/// assert_eq!(format!("{:?}", RedactedUrl(url)), r#""postgres://guest:***@127.0.0.1:5672/%2f""#);
/// assert_eq!(RedactedUrl(url).to_string(), "postgres://guest:***@127.0.0.1:5672/%2f");
/// ```
#[derive(Clone, Copy)]
pub struct RedactedUrl<'a>(pub &'a str);

impl std::fmt::Debug for RedactedUrl<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&redact_url(self.0), f)
    }
}

impl std::fmt::Display for RedactedUrl<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redact_url(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
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
            redact_url("broker://guest:guest@127.0.0.1:5672/%2f"),
            "broker://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1/db"),
            "postgres://postgres:***@127.0.0.1/db"
        );
        assert_eq!(redact_url("broker://h:1/v"), "broker://h:1/v");
        assert_eq!(redact_url("broker://u:p@ss@h/v"), "broker://u:***@h/v");
    }

    #[test]
    fn redaction_of_query_passwords() {
        assert_eq!(
            redact_url("postgres://app@db/x?password=pw1&sslmode=require"),
            "postgres://app:***@db/x?password=***&sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://db/x?sslmode=verify-full&sslpassword=pw2#frag"),
            "postgres://db/x?sslmode=verify-full&sslpassword=***#frag"
        );
        assert_eq!(
            redact_url("postgresql://u:pw3@h:5671/v?heartbeat=10&PassWord=pw4"),
            "postgresql://u:***@h:5671/v?heartbeat=10&PassWord=***"
        );
        // A name written percent-encoded is still a password to the driver.
        assert_eq!(
            redact_url("postgres://db/x?pass%77ord=pw5"),
            "postgres://db/x?pass%77ord=***"
        );
        assert_eq!(
            redact_url("postgres://db/x?application_name=a&sslmode=disable"),
            "postgres://db/x?application_name=a&sslmode=disable"
        );
        // Raw `?` and `#` in a password (the URL does not parse; its error shows it redacted).
        assert_eq!(
            redact_url("postgres://u:p?a#s@h:5672/v"),
            "postgres://u:***@h:5672/v"
        );
        // A query password is hidden even where the value is not a URL.
        assert_eq!(redact_url("db?token=pw6"), "db?token=***");
    }

    #[test]
    fn debug_of_the_config_hides_the_database_password() {
        let config = WorkerConfig {
            database_url: "postgres://app:pw7@db/x?password=pw8".into(),
            ..Default::default()
        };
        let debug = format!("{config:?}");
        assert!(
            debug.contains(r#"database_url: "postgres://app:***@db/x?password=***""#),
            "{debug}"
        );
        assert!(!debug.contains("pw7") && !debug.contains("pw8"), "{debug}");
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
                ..Default::default()
            },
        );
        let spec = config.resolve(&HandlerSpec::new("h", "E")).unwrap();
        assert_eq!(
            (spec.retry.base, spec.retry.max_attempts, spec.concurrency),
            (Duration::from_millis(10), 3, 2)
        );
        assert_eq!(
            handler_env_name("charge-on-order-placed"),
            "CHARGE_ON_ORDER_PLACED"
        );
    }

    #[test]
    fn breaker_settings_from_the_attribute_the_environment_and_one_handler() {
        let vars = Variables::new([
            ("WORKER_BREAKER_FAILURES", "4"),
            ("WORKER_BREAKER_PROBE", "500ms"),
            ("WORKER_HANDLER_SEND_RECEIPT_BREAKER_FAILURES", "0"),
            ("WORKER_HANDLER_CHARGE_BREAKER_MAX_PROBE", "5m"),
        ]);
        let config = WorkerConfig::from_vars(&vars).expect("valid variables");
        let charge = config.resolve(&HandlerSpec::new("charge", "E")).unwrap();
        assert_eq!(
            charge.breaker,
            crate::BreakerSettings {
                failures: 4,
                probe: Duration::from_millis(500),
                max_probe: Duration::from_secs(300),
            }
        );
        let receipt = config
            .resolve(&HandlerSpec::new("send-receipt", "E"))
            .unwrap();
        assert!(!receipt.breaker.enabled());
        let declared = HandlerSpec::new("other", "E");
        assert_eq!(
            WorkerConfig::default().resolve(&declared).unwrap().breaker,
            crate::BreakerSettings::DEFAULT
        );
        let bad = Variables::new([("WORKER_BREAKER_FAILURES", "many")]);
        let message = WorkerConfig::from_vars(&bad).unwrap_err().to_string();
        assert!(message.contains("WORKER_BREAKER_FAILURES"), "{message}");
        let bad = Variables::new([("WORKER_BREAKER_MAX_PROBE", "1s")]);
        let config = WorkerConfig::from_vars(&bad).unwrap();
        let message = config.resolve(&declared).unwrap_err().to_string();
        assert!(message.contains("circuit breaker of `other`"), "{message}");
    }

    #[test]
    fn handler_variables_are_read_once_typed_and_win_over_code() {
        let vars = Variables::new([
            ("WORKER_HANDLER_CHARGE_ON_ORDER_PLACED_RETRY_ATTEMPTS", "5"),
            ("WORKER_HANDLER_CHARGE_ON_ORDER_PLACED_CONCURRENCY", "3"),
            ("WORKER_HANDLER_GONE_RETRY_CAP", "1h"),
            ("WORKER_RETRY_BASE", "20ms"),
            ("WORKER_BATCH_SIZE", " "),
        ]);
        let mut config = WorkerConfig::from_vars(&vars).expect("valid variables");
        assert_eq!(config.batch_size, None, "a blank value counts as unset");
        config.handlers.insert(
            "charge-on-order-placed".into(),
            HandlerOverrides {
                retry: RetryOverrides {
                    max_attempts: Some(9),
                    jitter: Some(Duration::from_millis(7)),
                    ..Default::default()
                },
                concurrency: Some(1),
                ..Default::default()
            },
        );
        let spec = config
            .resolve(&HandlerSpec::new("charge-on-order-placed", "OrderPlaced"))
            .unwrap();
        assert_eq!(
            spec.retry.max_attempts, 5,
            "the variable wins over the code"
        );
        assert_eq!(
            spec.retry.jitter,
            Duration::from_millis(7),
            "the code fills the rest"
        );
        assert_eq!(spec.retry.base, Duration::from_millis(20));
        assert_eq!(spec.concurrency, 3);
        assert_eq!(
            config.unknown_handler_vars(&["charge-on-order-placed"]),
            ["WORKER_HANDLER_GONE_*"]
        );
    }

    #[test]
    fn a_misspelt_handler_setting_is_refused() {
        let vars = Variables::new([("WORKER_HANDLER_SEND_RECEIPT_CONCURENCY", "4")]);
        let message = WorkerConfig::from_vars(&vars).unwrap_err().to_string();
        assert!(
            message.starts_with(
                "WORKER_HANDLER_SEND_RECEIPT_CONCURENCY=\"4\" is invalid: not a handler setting"
            ),
            "{message}"
        );
        let vars = Variables::new([("WORKER_HANDLER_SEND_RECEIPT_RETRY_CAP", "soon")]);
        let message = WorkerConfig::from_vars(&vars).unwrap_err().to_string();
        assert!(
            message.starts_with("WORKER_HANDLER_SEND_RECEIPT_RETRY_CAP=\"soon\" is invalid"),
            "{message}"
        );
    }

    #[test]
    fn variables_debug_shows_names_not_values() {
        let vars = Variables::new([("DATABASE_URL", "postgres://u:secret@h/db")]);
        assert_eq!(format!("{vars:?}"), "Variables([\"DATABASE_URL\"])");
    }
}
