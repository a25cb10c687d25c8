//! Polling queue depths for the lag metrics: per handler, the work queue (consumer lag) together
//! with a partitioned handler's partition queues, the delay queues together (retry path) and the
//! dead-letter queue. One passive declare per queue per interval on a channel of its own.
//!
//! Partition queues are summed into `work` rather than labelled one by one: the alert is "this
//! handler falls behind", and a label per partition would multiply the series by up to 256.

use std::sync::Arc;
use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use worker_core::transport::telemetry::{Metrics, QueueKind};

use crate::topology::QueueNames;

/// One handler's queues to watch.
#[derive(Debug, Clone)]
pub(crate) struct Watched {
    pub(crate) handler: &'static str,
    pub(crate) names: QueueNames,
    pub(crate) delay_levels: u32,
    /// Partition queues (`0` for a handler that is not partitioned).
    pub(crate) partitions: u16,
}

async fn depth(channel: &Channel, queue: &str) -> Result<u32, lapin::Error> {
    let options = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    Ok(channel
        .queue_declare(queue.into(), options, FieldTable::default())
        .await?
        .message_count())
}

async fn poll_once(
    channel: &Channel,
    watched: &[Watched],
    metrics: &Metrics,
) -> Result<(), lapin::Error> {
    for w in watched {
        // A partitioned handler's events wait in its partition queues; `h` holds only replays.
        let mut waiting = depth(channel, &w.names.work).await?;
        for k in 0..w.partitions {
            waiting = waiting.saturating_add(depth(channel, &w.names.partition(k)).await?);
        }
        metrics.set_queue_depth(w.handler, QueueKind::Work, waiting);
        let mut retrying = 0u32;
        for level in 1..=w.delay_levels {
            retrying = retrying.saturating_add(depth(channel, &w.names.delay(level)).await?);
        }
        metrics.set_queue_depth(w.handler, QueueKind::Retry, retrying);
        metrics.set_queue_depth(
            w.handler,
            QueueKind::DeadLetter,
            depth(channel, &w.names.dlq).await?,
        );
    }
    Ok(())
}

/// Polls forever (until aborted). A failed poll (a queue deleted, the channel closed) opens a
/// new channel on the next tick.
pub(crate) async fn poll_forever(
    connection: Arc<Connection>,
    watched: Vec<Watched>,
    metrics: Arc<Metrics>,
    every: Duration,
) {
    let mut interval = tokio::time::interval(every);
    let mut channel: Option<Channel> = None;
    loop {
        interval.tick().await;
        if channel.as_ref().is_none_or(|c| !c.status().connected()) {
            channel = connection.create_channel().await.ok();
        }
        let Some(open) = &channel else { continue };
        if let Err(error) = poll_once(open, &watched, &metrics).await {
            tracing::debug!(%error, "polling queue depths failed; retrying next interval");
            channel = None;
        }
    }
}
