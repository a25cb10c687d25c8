//! The ingester (`docs/contracts.md` §10): moves every message of a handler's dead-letter queue
//! into the dead-letter store. A batch is acked only after the statement that stored it
//! committed, so a crash at any point leaves the unacked messages in the queue for the next run;
//! the store skips a message it has already (same key), so a redelivered one is stored once. A
//! message that is not a §5 record (someone published junk into a `.dlq`) is stored as unparsed,
//! byte for byte, with why: never lost, never a crash.

use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::Connection;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use worker_core::transport::dead_letter::{DeadLetterStore, StoredDeadLetter};
use worker_core::DeadLetterRecord;

use super::fingerprint::fingerprint;
use super::DlqError;
use crate::convert::properties_from_amqp;

/// How many messages one insert stores at most.
pub const BATCH: usize = 500;

/// How long a batch waits for more messages once it has one.
const LINGER: Duration = Duration::from_millis(20);

/// How often the worker deletes expired replayed and purged rows.
pub const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// The longest wait between two tries of a failed insert.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Moves `queue`'s messages (the dead-letter queue of `handler`) into `store` until `stop` is
/// cancelled, the channel closes, or (with `idle`) no message arrived for that long. Returns how
/// many messages it stored as new.
pub async fn ingest_queue(
    connection: &Connection,
    pool: &PgPool,
    store: &DeadLetterStore,
    handler: &str,
    queue: &str,
    stop: &CancellationToken,
    idle: Option<Duration>,
) -> Result<u64, DlqError> {
    let channel = connection
        .create_channel()
        .await
        .map_err(DlqError::broker("open a channel"))?;
    let exists = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await;
    if exists.is_err() {
        // Not declared yet: the handler never ran, so nothing was dead-lettered there.
        tracing::debug!(queue, "no dead-letter queue yet: nothing to ingest");
        return Ok(0);
    }
    let prefetch = u16::try_from(BATCH * 2).unwrap_or(u16::MAX);
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(DlqError::broker("set the prefetch"))?;
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            format!("dlq-ingest-{handler}").as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(DlqError::broker(format!("consume {queue}")))?;
    let mut stored = 0;
    loop {
        let quiet = async {
            match idle {
                Some(idle) => tokio::time::sleep(idle).await,
                None => std::future::pending().await,
            }
        };
        let first = tokio::select! {
            _ = stop.cancelled() => break,
            _ = quiet => break,
            next = consumer.next() => next,
        };
        let Some(first) = first else { break };
        let mut batch = vec![first.map_err(DlqError::broker(format!("receive from {queue}")))?];
        let linger = tokio::time::sleep(LINGER);
        tokio::pin!(linger);
        while batch.len() < BATCH {
            tokio::select! {
                _ = &mut linger => break,
                next = consumer.next() => match next {
                    Some(delivery) => batch.push(
                        delivery.map_err(DlqError::broker(format!("receive from {queue}")))?,
                    ),
                    None => break,
                },
            }
        }
        let letters: Vec<StoredDeadLetter> = batch
            .iter()
            .map(|delivery| letter(handler, queue, delivery))
            .collect();
        let mut wait = Duration::from_millis(100);
        loop {
            match store.insert(pool, &letters, Utc::now()).await {
                Ok(new) => {
                    stored += new;
                    break;
                }
                Err(error) => {
                    tracing::warn!(
                        %error, queue, size = letters.len(),
                        "dead-letter store unavailable: keeping the batch unacked and trying again"
                    );
                    tokio::select! {
                        // Unacked, the batch goes back to the queue when the channel closes.
                        _ = stop.cancelled() => return Ok(stored),
                        _ = tokio::time::sleep(wait) => {}
                    }
                    wait = (wait * 2).min(MAX_BACKOFF);
                }
            }
        }
        let last = batch.last().map(|d| d.delivery_tag).unwrap_or_default();
        channel
            .basic_ack(last, BasicAckOptions { multiple: true })
            .await
            .map_err(DlqError::broker(format!("ack the stored batch of {queue}")))?;
    }
    let _ = channel.close(200, "ingester stopped".into()).await;
    Ok(stored)
}

/// A dead-letter queue's message as the store keeps it.
fn letter(handler: &str, queue: &str, delivery: &Delivery) -> StoredDeadLetter {
    let record = serde_json::from_slice::<DeadLetterRecord>(&delivery.data)
        .map_err(|error| format!("not a dead-letter record: {error}"));
    StoredDeadLetter {
        queue: queue.to_owned(),
        handler: handler.to_owned(),
        body: delivery.data.clone(),
        properties: properties_from_amqp(&delivery.properties),
        fingerprint: record.as_ref().ok().map(fingerprint),
        record,
    }
}

/// The ingester running inside a worker (the default; not with `WORKER_DLQ_STORE=off`).
#[derive(Debug)]
pub(crate) struct RunningIngester {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl RunningIngester {
    /// Stops after the batch in progress (an unacked batch would only be stored again).
    pub(crate) async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Deletes every replayed and purged row older than `retention`, 10,000 at a time; how many
/// it deleted. A database error is logged (the next pass tries again), not returned: the rows
/// only wait longer.
pub(crate) async fn prune(pool: &PgPool, store: &DeadLetterStore, retention: Duration) -> u64 {
    let mut deleted = 0;
    loop {
        match store.prune(pool, retention).await {
            Ok(n) if n > 0 => {
                deleted += n;
                tracing::info!(rows = n, "expired dead letters deleted");
            }
            Ok(_) => break,
            Err(error) => {
                tracing::warn!(%error, "cannot delete expired dead letters");
                break;
            }
        }
    }
    deleted
}

/// How often the in-worker ingester reads the store's pending counts into the metrics.
pub const METRICS_EVERY: Duration = Duration::from_secs(15);

/// Starts moving the dead letters of `queues` (`(handler, dead-letter queue)`) into `store`, on
/// a broker connection of its own, opened again (with a backoff up to 5 s) after it is lost.
///
/// It also deletes replayed and purged rows older than `retention`, at start and then every
/// [`PRUNE_EVERY`], and reports the pending dead letters per handler and failure group to
/// `metrics` every [`METRICS_EVERY`].
pub(crate) fn spawn(
    pool: PgPool,
    store: DeadLetterStore,
    broker: crate::settings::BrokerSettings,
    consumer: String,
    queues: Vec<(String, String)>,
    retention: Duration,
    metrics: std::sync::Arc<worker_core::transport::telemetry::Metrics>,
) -> RunningIngester {
    let stop = CancellationToken::new();
    let token = stop.clone();
    let (prune_pool, prune_store, prune_token) = (pool.clone(), store.clone(), stop.clone());
    let handlers: Vec<String> = queues.iter().map(|(handler, _)| handler.clone()).collect();
    tokio::spawn(async move {
        let mut last_prune: Option<tokio::time::Instant> = None;
        loop {
            if last_prune.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
                last_prune = Some(tokio::time::Instant::now());
                prune(&prune_pool, &prune_store, retention).await;
            }
            match prune_store.pending_counts(&prune_pool).await {
                Ok(groups) => {
                    let names: Vec<&str> = handlers.iter().map(String::as_str).collect();
                    metrics.set_dead_letters_pending(&names, &groups);
                }
                Err(error) => tracing::debug!(%error, "cannot count pending dead letters"),
            }
            tokio::select! {
                _ = prune_token.cancelled() => break,
                _ = tokio::time::sleep(METRICS_EVERY) => {}
            }
        }
    });
    let task = tokio::spawn(async move {
        let mut wait = Duration::from_millis(200);
        while !token.is_cancelled() {
            match crate::connection::connect(&broker, &format!("{consumer}-dlq-ingest")).await {
                Ok(connection) => {
                    wait = Duration::from_millis(200);
                    let all = futures::future::join_all(queues.iter().map(|(handler, queue)| {
                        ingest_queue(&connection, &pool, &store, handler, queue, &token, None)
                    }))
                    .await;
                    for error in all.into_iter().filter_map(Result::err) {
                        tracing::warn!(%error, "dead-letter ingester stopped; starting again");
                    }
                    let _ = connection.close(200, "ingester stopped".into()).await;
                }
                Err(error) => {
                    tracing::warn!(%error, "dead-letter ingester cannot reach the broker");
                }
            }
            tokio::select! {
                _ = token.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(MAX_BACKOFF);
        }
    });
    RunningIngester { stop, task }
}
