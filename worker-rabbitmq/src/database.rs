//! Connecting to PostgreSQL: the pool of a worker or a relay, on the configured schema, with a
//! quick answer that names the cause when the database cannot be reached.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};
use worker_core::transport::config::redact_url;
use worker_core::{ConfigError, WorkerConfig};

use crate::error::WorkerError;

/// How long a first connection to the database or the broker may take before the worker says it
/// is unreachable.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a delivery may wait for a pooled connection once the worker runs.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// A pool of at most `max_connections` on `DATABASE_URL`, with the configured schema first on
/// the `search_path`.
///
/// One connection is opened first, with [`CONNECT_TIMEOUT`]: the pool alone would retry until
/// its acquire timeout and then say only that it timed out, hiding the cause (connection refused,
/// authentication failed, no such database). A URL that does not parse is a configuration
/// error naming `DATABASE_URL`.
pub(crate) async fn connect(
    config: &WorkerConfig,
    max_connections: u32,
) -> Result<PgPool, WorkerError> {
    let url = redact_url(&config.database_url);
    let invalid = |problem: String| ConfigError::Invalid {
        var: "DATABASE_URL".into(),
        value: url.clone(),
        reason: format!(
            "not a PostgreSQL URL ({problem}); expected postgres://user:password@host:5432/database"
        ),
    };
    let scheme = config
        .database_url
        .split_once("://")
        .map(|(scheme, _)| scheme);
    if !matches!(scheme, Some("postgres" | "postgresql")) {
        return Err(invalid("it must start with postgres:// or postgresql://".into()).into());
    }
    let options: PgConnectOptions = config
        .database_url
        .parse()
        .map_err(|error: sqlx::Error| invalid(error.to_string()))?;
    let search_path = format!("{},public", config.db_schema.quoted());
    // Notices (`schema "public" already exists, skipping` from the migrations' `IF NOT EXISTS`)
    // are not news: only warnings and errors reach the log.
    let options = options.options([
        ("search_path", search_path.as_str()),
        ("client_min_messages", "warning"),
    ]);
    match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options)).await {
        Ok(Ok(probe)) => {
            // Only the answer mattered; a failure to say goodbye changes nothing.
            let _ = probe.close().await;
        }
        Ok(Err(source)) => return Err(WorkerError::Database { url, source }),
        Err(_) => {
            return Err(WorkerError::Unanswered {
                service: "PostgreSQL",
                url,
                after: CONNECT_TIMEOUT,
                setting: "DATABASE_URL",
            })
        }
    }
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options)
        .await
        .map_err(|source| WorkerError::Database { url, source })
}
