//! Carrying out a [`Disposition`]: ack only once the outcome is durable (DESIGN.md §3).

use std::time::Duration;

use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::Acker;
use tracing::Instrument;
use worker_core::{Disposition, OutboundMessage, RetryPolicy};

use crate::delay;
use crate::publisher::PublishError;

use crate::publisher::Publisher;
use crate::topology::QueueNames;

/// Pause before giving a delivery back, so a database outage or a broken publish does not turn
/// into a hot redelivery loop.
pub(crate) const GIVE_BACK_PAUSE: Duration = Duration::from_secs(1);

/// How a settlement ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settled {
    /// Acked: the outcome is durable.
    Acked,
    /// Given back to the broker (nack with requeue, or the ack/nack itself failed and the broker
    /// will requeue when the channel closes).
    GivenBack,
}

/// Settles one delivery.
pub(crate) async fn settle(
    acker: &Acker,
    disposition: &Disposition,
    names: &QueueNames,
    retry: &RetryPolicy,
    publisher: &Publisher,
) -> Settled {
    match make_durable(disposition, names, retry, publisher).await {
        Durability::GiveBack(reason) => {
            tracing::warn!(
                reason,
                "giving the delivery back without spending an attempt"
            );
            give_back(acker).await
        }
        Durability::Durable => match acker.ack(BasicAckOptions::default()).await {
            Ok(true) => Settled::Acked,
            Ok(false) => {
                tracing::warn!("ack not sent after the outcome was durable (the delivery's channel is gone); the broker will redeliver");
                Settled::GivenBack
            }
            Err(error) => {
                // The outcome is durable but the broker will redeliver: dedup makes that harmless.
                tracing::warn!(%error, "ack failed after the outcome was durable; the broker will redeliver");
                Settled::GivenBack
            }
        },
        Durability::Failed(error) => {
            tracing::error!(%error, "could not make the outcome durable; giving the delivery back");
            give_back(acker).await
        }
    }
}

/// Whether a delivery's outcome is durable, so that it may be acked.
#[derive(Debug)]
pub(crate) enum Durability {
    /// Committed, or its retry copy or dead letter confirmed: ack.
    Durable,
    /// Not the message's fault: give it back without acking.
    GiveBack(String),
    /// The retry copy or dead letter was not confirmed: give it back.
    Failed(PublishError),
}

/// Makes a disposition's outcome durable before its ack: publishes the retry copy (to the delay
/// queue of its level under `retry`, its delay as the TTL) or the dead letter and waits for the
/// broker's confirm. Processed and duplicate deliveries are durable already (committed).
pub(crate) async fn make_durable(
    disposition: &Disposition,
    names: &QueueNames,
    retry: &RetryPolicy,
    publisher: &Publisher,
) -> Durability {
    let published = match disposition {
        Disposition::Processed | Disposition::Duplicate => return Durability::Durable,
        Disposition::Retry {
            message,
            delay,
            failures,
            span,
            ..
        } => {
            let queue = names.delay(delay::level(retry, *failures));
            tracing::info!(
                failures,
                delay_ms = delay.as_millis() as u64,
                queue,
                "publishing retry copy"
            );
            // Boxed: the publish future (with the copy carrying its TTL) is large and rare, and
            // every delivery in flight would otherwise carry room for it.
            Box::pin(async {
                let copy = delay::with_ttl(message, *delay);
                publish_in(span, publisher, &queue, &copy).await
            })
            .await
        }
        Disposition::DeadLetter { message, span, .. } => {
            Box::pin(publish_in(span, publisher, &names.dlq, message)).await
        }
        Disposition::GiveBack { reason } => return Durability::GiveBack(reason.clone()),
    };
    match published {
        Ok(()) => Durability::Durable,
        Err(error) => Durability::Failed(error),
    }
}

/// Publishes inside the disposition's producer span (whose context the message already carries).
async fn publish_in(
    span: &tracing::Span,
    publisher: &Publisher,
    queue: &str,
    message: &OutboundMessage,
) -> Result<(), PublishError> {
    span.record(crate::spans::ROUTING_KEY, queue);
    let result = publisher
        .publish("", queue, message)
        .instrument(span.clone())
        .await;
    if result.is_err() {
        span.record("otel.status_code", "error");
    }
    result
}

/// Nacks with requeue after a short pause. If the nack fails the channel is gone, and the broker
/// requeues the delivery itself.
pub(crate) async fn give_back(acker: &Acker) -> Settled {
    tokio::time::sleep(GIVE_BACK_PAUSE).await;
    nack(acker).await;
    Settled::GivenBack
}

/// Nacks with requeue now.
pub(crate) async fn nack(acker: &Acker) {
    match acker
        .nack(BasicNackOptions {
            requeue: true,
            multiple: false,
        })
        .await
    {
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            "nack not sent (the delivery's channel is gone); the broker requeues the delivery"
        ),
        Err(error) => {
            tracing::warn!(%error, "nack failed; the broker requeues the delivery when the channel closes")
        }
    }
}
