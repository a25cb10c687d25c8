//! Opening AMQP connections on the tokio runtime.

use std::time::Duration;

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::{Connection, ConnectionProperties};
use worker_core::config::AmqpTls;
use worker_core::WorkerConfig;

use crate::error::WorkerError;
use worker_core::config::redact_url;

/// `url` with `heartbeat=<secs>` added unless it sets a heartbeat itself. lapin sends a
/// heartbeat every half interval and gives the connection up (a connection error, which ends the
/// session) when nothing at all has arrived for two intervals: a silent peer is noticed within
/// about 2.5 heartbeats.
fn with_heartbeat(url: &str, heartbeat: Duration) -> String {
    if url.contains("heartbeat=") {
        return url.to_owned();
    }
    let separator = if url.contains('?') { '&' } else { '?' };
    let secs = heartbeat.as_secs().clamp(1, u64::from(u16::MAX));
    format!("{url}{separator}heartbeat={secs}")
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
    Connection::connect_with_config(&with_heartbeat(url, config.heartbeat), properties, tls)
        .await
        .map_err(|source| WorkerError::Connect {
            url: redact_url(url),
            source,
        })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::with_heartbeat;

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
}
