//! Publishing the events of one scenario: all at once (a backlog) or at a fixed rate.

use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection};
use lapin::{Confirmation, PublisherConfirm};

use crate::event::{body, event_id, now_us, PUBLISHED_HEADER};
use crate::BoxError;

/// Unconfirmed publishes allowed before waiting for the broker (backlog mode).
const CONFIRM_WINDOW: usize = 1024;

/// Publishes one scenario's events to `exchange` with `routing_key`.
#[derive(Debug)]
pub struct EventPublisher {
    channel: Channel,
    exchange: ShortString,
    routing_key: ShortString,
    payload_bytes: usize,
}

impl EventPublisher {
    /// A publisher on a new confirm channel of `connection`.
    pub async fn new(
        connection: &Connection,
        exchange: &str,
        routing_key: &str,
        payload_bytes: usize,
    ) -> Result<Self, BoxError> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self {
            channel,
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            payload_bytes,
        })
    }

    /// The sequence number of the i-th publish of a run of `messages` events and `duplicates`
    /// copies: the events in order, then copies of the first ones.
    fn seq(i: u64, messages: u64) -> u64 {
        if i < messages {
            i
        } else {
            i - messages
        }
    }

    async fn publish(&self, seq: u64) -> Result<PublisherConfirm, BoxError> {
        let published = now_us();
        let mut headers = FieldTable::default();
        headers.insert(
            ShortString::from(PUBLISHED_HEADER),
            AMQPValue::LongLongInt(published as i64),
        );
        let properties = BasicProperties::default()
            .with_message_id(ShortString::from(event_id(seq)))
            .with_content_type(ShortString::from("application/json"))
            .with_delivery_mode(2)
            .with_timestamp(published / 1_000_000)
            .with_headers(headers);
        Ok(self
            .channel
            .basic_publish(
                self.exchange.clone(),
                self.routing_key.clone(),
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                &body(seq, self.payload_bytes),
                properties,
            )
            .await?)
    }

    /// Publishes `messages` events and `duplicates` copies as fast as the broker confirms.
    pub async fn backlog(&self, messages: u64, duplicates: u64) -> Result<(), BoxError> {
        let mut window = Vec::with_capacity(CONFIRM_WINDOW);
        for i in 0..messages + duplicates {
            window.push(self.publish(Self::seq(i, messages)).await?);
            if window.len() == CONFIRM_WINDOW {
                confirm_all(std::mem::take(&mut window)).await?;
            }
        }
        confirm_all(window).await
    }

    /// Publishes `messages` events and `duplicates` copies at `rate` per second.
    pub async fn at_rate(&self, messages: u64, duplicates: u64, rate: u32) -> Result<(), BoxError> {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
        let mut pending = Vec::new();
        for i in 0..messages + duplicates {
            tick.tick().await;
            let confirm = self.publish(Self::seq(i, messages)).await?;
            pending.push(tokio::spawn(confirm_one(confirm)));
        }
        for confirm in pending {
            confirm.await??;
        }
        Ok(())
    }
}

async fn confirm_all(window: Vec<PublisherConfirm>) -> Result<(), BoxError> {
    for confirm in window {
        confirm_one(confirm).await?;
    }
    Ok(())
}

async fn confirm_one(confirm: PublisherConfirm) -> Result<(), BoxError> {
    match confirm.await? {
        Confirmation::Ack(None) => Ok(()),
        other => Err(format!("publish not confirmed or returned: {other:?}").into()),
    }
}
