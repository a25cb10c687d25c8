//! The two broker calls that settle a delivery, each logging its own failure. Both [`settle`]
//! (one delivery) and the batches' [`ledger`] go through them; neither imports the other for it.
//!
//! [`settle`]: crate::settle
//! [`ledger`]: crate::ledger

use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::Acker;

/// Acks (with `multiple`, every unacked delivery of the channel up to this one); returns whether
/// the ack went out. Called only once the outcome is durable, so a failed ack costs a harmless
/// redelivery (dedup recognises it).
pub(crate) async fn ack(acker: &Acker, multiple: bool) -> bool {
    match acker.ack(BasicAckOptions { multiple }).await {
        Ok(true) => true,
        Ok(false) => {
            tracing::warn!(multiple, "ack not sent after the outcome was durable (the delivery's channel is gone); the broker will redeliver");
            false
        }
        Err(error) => {
            tracing::warn!(%error, multiple, "ack failed after the outcome was durable; the broker will redeliver");
            false
        }
    }
}

/// Nacks with requeue now. If the nack fails the channel is gone, and the broker requeues the
/// delivery itself.
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
