//! Confirmed publishing: a publish counts only when the broker confirms it and did not return it.

use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use std::sync::Arc;

use lapin::{Channel, Confirmation, Connection};
use tokio::sync::Mutex;
use worker_core::transport::pipeline::OutboundMessage;

use crate::convert::{properties_to_amqp, short_string, TooLong};

/// How long to wait for a publisher confirm before treating the publish as failed.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a publish did not become durable. The delivery that caused it is not acked.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The channel or connection failed.
    #[error("publish to exchange {exchange:?} with routing key {routing_key:?} failed: {source}")]
    Broker {
        /// Exchange.
        exchange: String,
        /// Routing key.
        routing_key: String,
        /// The client's error (boxed: lapin 4's error is 80 bytes).
        source: Box<lapin::Error>,
    },
    /// The broker returned the message as unroutable (no queue bound).
    #[error("the broker returned the message published to {exchange:?} with routing key {routing_key:?}: {reply} (is the queue declared?)")]
    Returned {
        /// Exchange.
        exchange: String,
        /// Routing key.
        routing_key: String,
        /// The broker's reply text.
        reply: String,
    },
    /// The broker refused the message (nack).
    #[error(
        "the broker nacked the message published to {exchange:?} with routing key {routing_key:?}"
    )]
    Nacked {
        /// Exchange.
        exchange: String,
        /// Routing key.
        routing_key: String,
    },
    /// The message, its exchange or its routing key does not fit AMQP's types (a short string
    /// over 255 bytes). Nothing was sent.
    #[error("cannot publish to exchange {exchange:?} with routing key {routing_key:?}: {source}")]
    Unencodable {
        /// Exchange.
        exchange: String,
        /// Routing key.
        routing_key: String,
        /// What does not fit.
        source: TooLong,
    },
    /// No confirm arrived in time.
    #[error("no publisher confirm within {0:?}")]
    Timeout(Duration),
}

/// Publishes with `mandatory` set and waits for the broker's confirm, on a channel of its own
/// that it reopens when it breaks.
#[derive(Debug)]
pub struct Publisher {
    connection: Arc<Connection>,
    channel: Mutex<Option<Channel>>,
}

impl Publisher {
    /// A publisher on `connection`; the channel opens on first use.
    pub fn new(connection: Arc<Connection>) -> Self {
        Self {
            connection,
            channel: Mutex::new(None),
        }
    }

    async fn channel(&self) -> Result<Channel, lapin::Error> {
        let mut guard = self.channel.lock().await;
        if let Some(channel) = guard.as_ref().filter(|c| c.status().connected()) {
            return Ok(channel.clone());
        }
        let channel = self.connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        *guard = Some(channel.clone());
        Ok(channel)
    }

    /// Closes the publishing channel, if one is open: before the connection is closed, so that
    /// the client does not find the channel half-closed and log a connection error.
    pub async fn close(&self) {
        if let Some(channel) = self.channel.lock().await.take() {
            let _ = channel.close(200, "done publishing".into()).await;
        }
    }

    /// Publishes `message` and returns only once the broker confirmed it, routed.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &OutboundMessage,
    ) -> Result<(), PublishError> {
        let broker = |source| PublishError::Broker {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            source: Box::new(source),
        };
        let unencodable = |source| PublishError::Unencodable {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            source,
        };
        let properties = properties_to_amqp(&message.properties).map_err(unencodable)?;
        let amqp_exchange =
            short_string(exchange, || "the exchange name".into()).map_err(unencodable)?;
        let amqp_routing_key =
            short_string(routing_key, || "the routing key".into()).map_err(unencodable)?;
        let channel = self.channel().await.map_err(broker)?;
        let options = BasicPublishOptions {
            mandatory: true,
            immediate: false,
        };
        let confirm = channel
            .basic_publish(
                amqp_exchange,
                amqp_routing_key,
                options,
                &message.body,
                properties,
            )
            .await
            .map_err(broker)?;
        let confirmation = tokio::time::timeout(CONFIRM_TIMEOUT, confirm)
            .await
            .map_err(|_| PublishError::Timeout(CONFIRM_TIMEOUT))?
            .map_err(broker)?;
        match confirmation {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => {
                Err(PublishError::Returned {
                    exchange: exchange.into(),
                    routing_key: routing_key.into(),
                    reply: returned.reply_text.to_string(),
                })
            }
            Confirmation::Nack(None) | Confirmation::NotRequested => Err(PublishError::Nacked {
                exchange: exchange.into(),
                routing_key: routing_key.into(),
            }),
        }
    }
}
