//! Opening AMQP connections on the tokio runtime.

use std::time::Duration;

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::{Connection, ConnectionProperties};
use worker_core::config::AmqpTls;
use worker_core::WorkerConfig;

use crate::error::WorkerError;
use worker_core::config::redact_url;

/// The largest AMQP frame the worker asks for, unless the URL sets `frame_max` itself. lapin
/// keeps a receive and a send buffer of 32 frames each for the life of the connection, so
/// RabbitMQ's default of 128 KiB would cost 8 MiB of memory per connection; 32 KiB costs 2 MiB.
/// Larger messages still go through, in more frames.
pub(crate) const FRAME_MAX: u32 = 32 * 1024;

/// `url` with `heartbeat=<secs>` (see [`with_heartbeat`]) and `frame_max=`[`FRAME_MAX`] added,
/// each unless the URL sets it itself.
fn with_connection_limits(url: &str, heartbeat: Duration) -> String {
    with_query_default(
        &with_heartbeat(url, heartbeat),
        "frame_max",
        &FRAME_MAX.to_string(),
    )
}

/// `url` with `heartbeat=<secs>` added unless it sets a heartbeat itself. lapin sends a
/// heartbeat every half interval and gives the connection up (a connection error, which ends the
/// session) when nothing at all has arrived for two intervals: a silent peer is noticed within
/// about 2.5 heartbeats.
fn with_heartbeat(url: &str, heartbeat: Duration) -> String {
    let secs = heartbeat.as_secs().clamp(1, u64::from(u16::MAX));
    with_query_default(url, "heartbeat", &secs.to_string())
}

/// `url` with the query parameter `name=value` added unless it has `name` already.
fn with_query_default(url: &str, name: &str, value: &str) -> String {
    let query = url.split_once('?').map(|(_, query)| query).unwrap_or("");
    if query
        .split('&')
        .any(|pair| pair.split('=').next() == Some(name))
    {
        return url.to_owned();
    }
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}{name}={value}")
}

/// The client side of TLS for `amqps://` URLs, read from the configured files.
fn tls_config(tls: &AmqpTls) -> Result<OwnedTLSConfig, WorkerError> {
    let read = |path: &std::path::Path, what: &str| {
        std::fs::read(path).map_err(|source| WorkerError::TlsFile {
            what: what.to_owned(),
            path: path.display().to_string(),
            source,
        })
    };
    let cert_chain = match &tls.ca_file {
        Some(path) => Some(
            String::from_utf8_lossy(&read(path, "CA certificate file (WORKER_AMQP_CA_FILE)")?)
                .into_owned(),
        ),
        None => None,
    };
    let identity = match &tls.client_identity {
        Some(path) => Some(OwnedIdentity {
            der: read(path, "client identity file (WORKER_AMQP_CLIENT_IDENTITY)")?,
            password: tls
                .client_identity_password
                .as_ref()
                .map(|p| p.0.clone())
                .unwrap_or_default(),
        }),
        None => None,
    };
    Ok(OwnedTLSConfig {
        identity,
        cert_chain,
    })
}

/// Connects to `config`'s broker (TLS settings included), naming the connection `name` (visible in
/// the management UI). Errors never show the password.
pub(crate) async fn connect(config: &WorkerConfig, name: &str) -> Result<Connection, WorkerError> {
    let url = config.amqp_url.as_str();
    let tls = tls_config(&config.amqp_tls)?;
    let properties = ConnectionProperties::default()
        .with_connection_name(name.into())
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio);
    Connection::connect_with_config(
        &with_connection_limits(url, config.heartbeat),
        properties,
        tls,
    )
    .await
    .map_err(|source| WorkerError::Connect {
        url: redact_url(url),
        source,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{with_connection_limits, with_heartbeat};

    #[test]
    fn adds_a_heartbeat_unless_one_is_set() {
        let ten = Duration::from_secs(10);
        assert_eq!(
            with_heartbeat("amqp://h/%2f", ten),
            "amqp://h/%2f?heartbeat=10"
        );
        assert_eq!(
            with_heartbeat("amqp://h/%2f?frame_max=8192", Duration::from_secs(2)),
            "amqp://h/%2f?frame_max=8192&heartbeat=2"
        );
        assert_eq!(
            with_heartbeat("amqp://h/%2f?heartbeat=30", ten),
            "amqp://h/%2f?heartbeat=30"
        );
    }

    #[test]
    fn asks_for_small_frames_unless_the_url_sets_frame_max() {
        let ten = Duration::from_secs(10);
        assert_eq!(
            with_connection_limits("amqp://h/%2f", ten),
            "amqp://h/%2f?heartbeat=10&frame_max=32768"
        );
        assert_eq!(
            with_connection_limits("amqp://h/%2f?frame_max=131072", ten),
            "amqp://h/%2f?frame_max=131072&heartbeat=10"
        );
        // A parameter whose name merely ends in `frame_max` is not `frame_max`.
        assert_eq!(
            with_connection_limits("amqp://h/%2f?x_frame_max=1&heartbeat=5", ten),
            "amqp://h/%2f?x_frame_max=1&heartbeat=5&frame_max=32768"
        );
    }
}
