//! The two broker calls that settle a delivery, each logging its own failure. Both `settle` (one
//! delivery) and the batches' `ledger` go through them; neither imports the other for it.

use std::sync::Arc;

use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::Channel;

/// Settles one delivery: its channel and its delivery tag.
///
/// We do not use lapin's own `Acker` (the `acker` of a delivery): in lapin 4 each of its acks and
/// nacks goes through the connection's internal RPC queue, which spawns a task per call, so with
/// 1,000 deliveries in flight about 1,000 such tasks (some 4 KB each) are alive at once, and the
/// worker's peak memory grows by several MB (measured with the benchmark's 1,000-in-flight runs;
/// see docs/decisions.md). Sending `basic.ack` on the channel directly is the same frame without
/// the task. What lapin's acker adds, a guard against settling one delivery twice, the consume
/// path gives already: each delivery is settled exactly once, by its strategy (and the ack
/// ledger for batches). A channel that closed in the meantime refuses the call, as it poisons
/// lapin's acker; the broker then redelivers.
#[derive(Debug, Clone)]
pub(crate) struct Acker {
    channel: Arc<Channel>,
    tag: u64,
}

impl Acker {
    /// The acker of the delivery `tag` of `channel`.
    pub(crate) fn new(channel: Arc<Channel>, tag: u64) -> Self {
        Self { channel, tag }
    }

    /// The delivery tag it settles.
    pub(crate) fn tag(&self) -> u64 {
        self.tag
    }
}

/// Acks (with `multiple`, every unacked delivery of the channel up to this one); returns whether
/// the ack went out. Called only once the outcome is durable, so a failed ack costs a harmless
/// redelivery (dedup recognises it).
pub(crate) async fn ack(acker: &Acker, multiple: bool) -> bool {
    match acker
        .channel
        .basic_ack(acker.tag, BasicAckOptions { multiple })
        .await
    {
        Ok(()) => true,
        Err(error) => {
            tracing::warn!(%error, multiple, "ack failed after the outcome was durable (the delivery's channel is gone?); the broker will redeliver");
            false
        }
    }
}

/// Nacks with requeue now. If the nack fails the channel is gone, and the broker requeues the
/// delivery itself.
pub(crate) async fn nack(acker: &Acker) {
    let options = BasicNackOptions {
        requeue: true,
        multiple: false,
    };
    if let Err(error) = acker.channel.basic_nack(acker.tag, options).await {
        tracing::warn!(%error, "nack failed; the broker requeues the delivery when the channel closes");
    }
}
