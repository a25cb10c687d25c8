//! Opening AMQP connections on the tokio runtime, and noticing when one is lost.
//!
//! lapin's own connection recovery stays off (`ConnectionProperties::enable_auto_recover` is never
//! called, and lapin does not retry the TCP connection either): the session supervisor reconnects,
//! re-declares the topology and resumes every consumer itself, with its own backoff, so a lost
//! connection always surfaces as an error on the consumer streams.

use std::time::Duration;

use futures::StreamExt;
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::{Connection, ConnectionProperties, Event};

use crate::database::CONNECT_TIMEOUT;
use crate::error::WorkerError;
use crate::settings::{BrokerSettings, BrokerTls};
use worker_core::transport::config::redact_url;

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
fn tls_config(tls: &BrokerTls) -> Result<OwnedTLSConfig, WorkerError> {
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
        Some(path) => Some(OwnedIdentity::PKCS12 {
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

/// Connects to the broker (TLS settings included), naming the connection `name` (visible in
/// the management UI). Errors never show the password.
pub(crate) async fn connect(
    broker: &BrokerSettings,
    name: &str,
) -> Result<Connection, WorkerError> {
    let url = broker.url.as_str();
    let tls = tls_config(&broker.tls)?;
    let failed = |source| WorkerError::Connect {
        url: redact_url(url),
        source,
    };
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    // The tokio runtime this is called on: lapin spawns its heartbeat and internal tasks there and
    // registers the socket with its reactor (its I/O loop thread blocks on this runtime's handle).
    let runtime = lapin::runtime::default_runtime().map_err(failed)?;
    let url_with_heartbeat = with_heartbeat(url, broker.heartbeat);
    let connecting = Connection::connect_with_config(&url_with_heartbeat, properties, tls, runtime);
    // A refused connection fails at once; an address that swallows packets would otherwise hold
    // the worker for the system's TCP timeout, minutes, without a word.
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(connected) => connected.map_err(failed),
        Err(_) => Err(WorkerError::Unanswered {
            service: "RabbitMQ",
            url: redact_url(url),
            after: CONNECT_TIMEOUT,
            setting: "AMQP_URL",
        }),
    }
}

/// Calls `lost` once `connection` fails (an I/O error, a missed heartbeat, the broker closing it),
/// from a task on the current runtime. lapin 4 reports connection and channel errors on one event
/// stream (it has no `on_error` callback any more): an error while the connection is still up
/// belongs to one channel, whose consumer or publisher sees it itself, so only an error that left
/// the connection down counts. A clean close calls nothing; closing a connection whose channels
/// are already failing may (lapin reports that as a connection error), which is harmless here.
pub(crate) fn on_error(connection: &Connection, lost: impl FnOnce(lapin::Error) + Send + 'static) {
    let events = connection.events_listener();
    let status = connection.status().clone();
    tokio::spawn(async move {
        let mut events = std::pin::pin!(events);
        // The stream ends once the connection and its channels are gone.
        while let Some(event) = events.next().await {
            if let Event::Error(error) = event {
                if !status.connected() {
                    lost(error);
                    return;
                }
            }
        }
    });
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
