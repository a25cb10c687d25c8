//! Opening AMQP connections on the tokio runtime.

use lapin::{Connection, ConnectionProperties};

use crate::error::WorkerError;
use worker_core::config::redact_url;

/// Connects to `url`, naming the connection `name` (visible in the management UI).
pub(crate) async fn connect(url: &str, name: &str) -> Result<Connection, WorkerError> {
    let properties = ConnectionProperties::default()
        .with_connection_name(name.into())
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio);
    Connection::connect(url, properties)
        .await
        .map_err(|source| WorkerError::Connect {
            url: redact_url(url),
            source,
        })
}
