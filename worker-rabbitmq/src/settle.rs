//! Carrying out a [`Disposition`]: ack only once the outcome is durable (`docs/contracts.md` §3).
//!
//! [`make_durable`] publishes what the outcome needs (a retry copy, a dead letter) and waits for
//! the broker's confirm; [`verdict`] is the one place that turns the result into "ack" or "give
//! back" and logs why a delivery goes back. A single delivery is then acked on its own
//! ([`settle`]), a batch through its channel's [`Ledger`] ([`settle_batch`]).

use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;
use worker_core::transport::pipeline::{Disposition, OutboundMessage};
use worker_core::RetryPolicy;

use crate::ack::{self, Acker};
use crate::delay;
use crate::ledger::Ledger;
use crate::publisher::{PublishError, Publisher};
use crate::topology::QueueNames;

/// Pause before giving a delivery back, so a database outage or a broken publish does not turn
/// into a hot redelivery loop.
pub(crate) const GIVE_BACK_PAUSE: Duration = Duration::from_secs(1);

/// Where a handler's outcomes go: its queues, its retry policy (which delay queue a retry copy
/// takes) and the session's publisher.
#[derive(Clone, Copy)]
pub(crate) struct Outlets<'a> {
    pub(crate) names: &'a QueueNames,
    pub(crate) retry: &'a RetryPolicy,
    pub(crate) publisher: &'a Publisher,
}

/// How a settlement ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settled {
    /// Acked: the outcome is durable.
    Acked,
    /// Given back to the broker (nack with requeue, or the ack/nack itself failed and the broker
    /// will requeue when the channel closes).
    GivenBack,
}

/// Settles one delivery: makes its outcome durable, then acks it, or gives it back.
pub(crate) async fn settle(
    acker: &Acker,
    disposition: &Disposition,
    outlets: Outlets<'_>,
) -> Settled {
    match verdict(make_durable(disposition, outlets).await) {
        Verdict::Ack if ack::ack(acker, false).await => Settled::Acked,
        // The outcome is durable but the ack failed: the broker will redeliver.
        Verdict::Ack => Settled::GivenBack,
        Verdict::GiveBack => give_back(acker).await,
    }
}

/// Settles a batch: makes every outcome durable, frees `batch_slot` (the transaction is over: the
/// next batch may start while this one waits for its acks), acks the durable deliveries through
/// `ledger` and, after [`GIVE_BACK_PAUSE`], gives back the others. `settled(i, acked)` is called
/// for each delivery `i` once its ack or nack went out.
pub(crate) async fn settle_batch(
    ledger: &Ledger,
    deliveries: &[Acker],
    dispositions: &[Disposition],
    outlets: Outlets<'_>,
    batch_slot: OwnedSemaphorePermit,
    mut settled: impl FnMut(usize, bool),
) {
    let durability =
        futures::future::join_all(dispositions.iter().map(|d| make_durable(d, outlets))).await;
    drop(batch_slot);
    let (mut to_ack, mut to_give_back) = (Vec::with_capacity(deliveries.len()), Vec::new());
    for (i, durability) in durability.into_iter().enumerate() {
        match verdict(durability) {
            Verdict::Ack => to_ack.push(i),
            Verdict::GiveBack => to_give_back.push(i),
        }
    }
    let acks: Vec<&Acker> = to_ack.iter().map(|&i| &deliveries[i]).collect();
    let acked = ledger.ack(&acks).await;
    for (&i, acked) in to_ack.iter().zip(acked) {
        settled(i, acked);
    }
    if !to_give_back.is_empty() {
        // Not at once: a broken publish or database must not become a hot redelivery loop.
        tokio::time::sleep(GIVE_BACK_PAUSE).await;
        for &i in &to_give_back {
            ledger.nack(&deliveries[i]).await;
            settled(i, false);
        }
    }
}

/// Whether a delivery's outcome is durable, so that it may be acked.
#[derive(Debug)]
enum Durability {
    /// Committed, or its retry copy or dead letter confirmed: ack.
    Durable,
    /// Not the message's fault: give it back without acking.
    GiveBack(String),
    /// The retry copy or dead letter was not confirmed: give it back.
    Failed(PublishError),
}

/// What to do with a delivery once its outcome is (or could not be made) durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Ack,
    GiveBack,
}

/// The only place that decides between ack and give-back, and says why a delivery goes back.
fn verdict(durability: Durability) -> Verdict {
    match durability {
        Durability::Durable => Verdict::Ack,
        Durability::GiveBack(reason) => {
            tracing::warn!(
                reason,
                "giving the delivery back without spending an attempt"
            );
            Verdict::GiveBack
        }
        Durability::Failed(error) => {
            tracing::error!(%error, "could not make the outcome durable; giving the delivery back");
            Verdict::GiveBack
        }
    }
}

/// Makes a disposition's outcome durable before its ack: publishes the retry copy (to the delay
/// queue of its level under `retry`, its delay as the TTL) or the dead letter and waits for the
/// broker's confirm. Processed and duplicate deliveries are durable already (committed).
async fn make_durable(disposition: &Disposition, outlets: Outlets<'_>) -> Durability {
    let Outlets {
        names,
        retry,
        publisher,
    } = outlets;
    let published = match disposition {
        Disposition::Processed | Disposition::Duplicate => return Durability::Durable,
        Disposition::Retry {
            message,
            delay,
            failures,
            span,
            ..
        }
        | Disposition::Defer {
            message,
            delay,
            failures,
            span,
        } => {
            let (level, ttl) = delay::placement(retry, *failures, *delay);
            let queue = names.delay(level);
            tracing::info!(
                failures,
                delay_ms = delay.as_millis() as u64,
                ttl_ms = ttl.as_millis() as u64,
                queue,
                "publishing retry copy"
            );
            // Boxed: the publish future (with the copy carrying its TTL) is large and rare, and
            // every delivery in flight would otherwise carry room for it.
            Box::pin(async {
                let copy = delay::with_ttl(message, ttl);
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

/// Nacks with requeue after [`GIVE_BACK_PAUSE`]. If the nack fails the channel is gone, and the
/// broker requeues the delivery itself.
pub(crate) async fn give_back(acker: &Acker) -> Settled {
    tokio::time::sleep(GIVE_BACK_PAUSE).await;
    ack::nack(acker).await;
    Settled::GivenBack
}
