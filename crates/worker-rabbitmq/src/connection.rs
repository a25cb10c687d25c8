//! Opening AMQP connections on the tokio runtime.

use lapin::{Connection, ConnectionProperties};

use crate::error::WorkerError;
use worker_core::config::redact_url;

/// Heartbeat asked for when the URL does not set one: a dead peer is noticed within seconds.
const DEFAULT_HEARTBEAT_SECS: u16 = 10;

/// `url` with `heartbeat=10` added unless it sets a heartbeat itself.
fn with_heartbeat(url: &str) -> String {
    if url.contains("heartbeat=") {
        return url.to_owned();
    }
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}heartbeat={DEFAULT_HEARTBEAT_SECS}")
}

/// Connects to `url`, naming the connection `name` (visible in the management UI).
pub(crate) async fn connect(url: &str, name: &str) -> Result<Connection, WorkerError> {
    let properties = ConnectionProperties::default()
        .with_connection_name(name.into())
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio);
    Connection::connect(&with_heartbeat(url), properties)
        .await
        .map_err(|source| WorkerError::Connect {
            url: redact_url(url),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::with_heartbeat;

    #[test]
    fn adds_a_heartbeat_unless_one_is_set() {
        assert_eq!(with_heartbeat("amqp://h/%2f"), "amqp://h/%2f?heartbeat=10");
        assert_eq!(
            with_heartbeat("amqp://h/%2f?frame_max=8192"),
            "amqp://h/%2f?frame_max=8192&heartbeat=10"
        );
        assert_eq!(
            with_heartbeat("amqp://h/%2f?heartbeat=30"),
            "amqp://h/%2f?heartbeat=30"
        );
    }
}
