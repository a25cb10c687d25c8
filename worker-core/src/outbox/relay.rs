//! The broker-agnostic relay loop: lock a batch of unpublished rows, publish them through an
//! [`OutboxSink`], mark the confirmed ones published in the same transaction, commit. Woken by
//! `NOTIFY` within milliseconds of a commit, with a poll as the fallback.
//!
//! What it guarantees:
//! - **At least once.** A row is marked published only after the sink confirmed it, in the
//!   transaction that locked it. A crash (or a lost database connection) between the confirm and
//!   the commit rolls the mark back and the row is published again: a duplicate with the same
//!   `message_id`, which dedup handlers absorb. Never a loss.
//! - **No double publish in normal operation** with several relays: rows are locked with
//!   `FOR UPDATE SKIP LOCKED`, so each row is in one relay's batch at a time.
//! - **Per-aggregate order.** Rows of one aggregate are published one after the other in id order;
//!   after a failed publish of a row, later rows of its aggregate wait until it is published (other
//!   aggregates go on). A row whose earlier row of the same aggregate is held by another relay is
//!   left for later. Id order is commit order for one aggregate as long as the transactions that
//!   write an aggregate's events are serialized (they are when they update the aggregate's row).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::PgListener;
use sqlx::PgPool;

use super::migrations::NOTIFY_CHANNEL;
use super::settings::OutboxSettings;
use super::table::{OutboxRow, OutboxTable};
use crate::handler::BoxFuture;
use crate::pipeline::disposition::OutboundMessage;

/// Why the sink did not publish a row.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SinkError {
    /// The broker cannot be reached: not the row's fault. The batch stops; no attempt is counted.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The broker refused or returned the message: counted as a failed attempt of the row,
    /// retried after a backoff; later rows of its aggregate wait.
    #[error("{0}")]
    Rejected(String),
}

/// One event to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxMessage {
    /// The event id (`message_id`).
    pub event_id: String,
    /// The aggregate (order is kept per aggregate).
    pub aggregate_id: String,
    /// The event type: the routing key.
    pub event_type: String,
    /// Body and properties.
    pub message: OutboundMessage,
}

/// Where the relay publishes: returns only once the broker confirmed the message.
pub trait OutboxSink: Send + Sync + 'static {
    /// Publishes `message` and waits for the broker's confirm.
    fn publish<'a>(&'a self, message: &'a OutboxMessage) -> BoxFuture<'a, Result<(), SinkError>>;
}

/// Hooks into the relay (for telemetry and fault-injection tests). Empty defaults.
pub trait RelayObserver: Send + Sync + 'static {
    /// The broker confirmed `event_id`; its row is not marked published yet.
    fn published(&self, event_id: &str) {
        let _ = event_id;
    }

    /// A batch committed: these rows are marked published.
    fn committed(&self, event_ids: &[String]) {
        let _ = event_ids;
    }

    /// The table has `rows` unpublished rows (due or waiting out a backoff), counted after a
    /// drain at most every 5 s (the whole table: every relay on it reports the same number).
    fn pending(&self, rows: u64) {
        let _ = rows;
    }
}

/// How often at most the relay counts the unpublished rows for [`RelayObserver::pending`]: a
/// cheap count (an index-only scan of the partial index on unpublished rows), done after a drain,
/// so every poll interval when that is longer.
pub(crate) const PENDING_COUNT_INTERVAL: Duration = Duration::from_secs(5);

/// The metrics' `worker_outbox_pending_events` gauge follows the relay's count.
impl RelayObserver for crate::telemetry::metrics::Metrics {
    fn pending(&self, rows: u64) {
        self.set_outbox_pending(rows);
    }
}

/// A [`RelayObserver`] that does nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoRelayObserver;

impl RelayObserver for NoRelayObserver {}

/// What one batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// Rows locked.
    pub claimed: usize,
    /// Rows confirmed and marked published.
    pub published: usize,
    /// Rows whose publish was refused (retried after a backoff).
    pub failed: usize,
    /// Rows left for later: an earlier row of their aggregate was not published yet.
    pub blocked: usize,
    /// The broker was unreachable; the rest of the batch was left as it was.
    pub unavailable: bool,
}

/// The relay loop over one outbox table.
pub struct RelayLoop {
    pool: PgPool,
    table: OutboxTable,
    settings: OutboxSettings,
    sink: Arc<dyn OutboxSink>,
    observer: Arc<dyn RelayObserver>,
}

impl std::fmt::Debug for RelayLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayLoop")
            .field("table", &self.table)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

enum RowOutcome {
    Published(String, i64),
    Failed(OutboxRow, String),
    Unavailable,
}

impl RelayLoop {
    /// A relay over `table`, publishing through `sink`.
    pub fn new(
        pool: PgPool,
        table: OutboxTable,
        settings: OutboxSettings,
        sink: Arc<dyn OutboxSink>,
        observer: Arc<dyn RelayObserver>,
    ) -> Self {
        Self {
            pool,
            table,
            settings,
            sink,
            observer,
        }
    }

    /// Publishes one batch: lock, publish (aggregates in parallel, each aggregate's rows in id
    /// order), mark, commit.
    pub async fn drain_once(&self) -> Result<BatchReport, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let batch = self.table.claim(&mut tx, self.settings.batch_size).await?;
        if batch.is_empty() {
            tx.rollback().await?;
            return Ok(BatchReport::default());
        }
        let claimed = batch.len();
        let (ready, blocked) = self.table.publishable(&mut tx, batch).await?;
        let mut chains: Vec<Vec<OutboxRow>> = Vec::new();
        let mut chain_of: HashMap<String, usize> = HashMap::new();
        for row in ready {
            let index = *chain_of.entry(row.aggregate_id.clone()).or_insert_with(|| {
                chains.push(Vec::new());
                chains.len() - 1
            });
            chains[index].push(row);
        }
        let outcomes = futures::future::join_all(chains.into_iter().map(|c| self.publish_chain(c)))
            .await
            .into_iter()
            .flatten();
        let mut report = BatchReport {
            claimed,
            blocked,
            ..BatchReport::default()
        };
        let mut published_ids = Vec::new();
        let mut published_events = Vec::new();
        for outcome in outcomes {
            match outcome {
                RowOutcome::Published(event_id, id) => {
                    published_ids.push(id);
                    published_events.push(event_id);
                }
                RowOutcome::Failed(row, error) => {
                    let failures = u32::try_from(row.attempts).unwrap_or(0) + 1;
                    let backoff = self.settings.backoff(failures);
                    tracing::warn!(
                        event_id = row.event_id,
                        event_type = row.event_type,
                        aggregate_id = row.aggregate_id,
                        failures,
                        retry_in = ?backoff,
                        %error,
                        "outbox publish refused; later events of this aggregate wait for it"
                    );
                    self.table
                        .mark_failed(&mut tx, row.id, &error, backoff)
                        .await?;
                    report.failed += 1;
                }
                RowOutcome::Unavailable => report.unavailable = true,
            }
        }
        self.table.mark_published(&mut tx, &published_ids).await?;
        tx.commit().await?;
        report.published = published_ids.len();
        if !published_events.is_empty() {
            self.observer.committed(&published_events);
            tracing::debug!(published = report.published, "outbox batch published");
        }
        Ok(report)
    }

    /// Publishes one aggregate's rows in order; stops at the first that is not confirmed.
    async fn publish_chain(&self, chain: Vec<OutboxRow>) -> Vec<RowOutcome> {
        let mut outcomes = Vec::with_capacity(chain.len());
        for row in chain {
            let message = OutboxMessage {
                event_id: row.event_id.clone(),
                aggregate_id: row.aggregate_id.clone(),
                event_type: row.event_type.clone(),
                message: row.message(),
            };
            match self.sink.publish(&message).await {
                Ok(()) => {
                    self.observer.published(&row.event_id);
                    outcomes.push(RowOutcome::Published(row.event_id, row.id));
                }
                Err(SinkError::Rejected(error)) => {
                    outcomes.push(RowOutcome::Failed(row, error));
                    break;
                }
                Err(SinkError::Unavailable(error)) => {
                    tracing::warn!(%error, "outbox relay cannot publish; will try again");
                    outcomes.push(RowOutcome::Unavailable);
                    break;
                }
            }
        }
        outcomes
    }

    /// Drains until a batch makes no progress or is not full.
    async fn drain(&self) {
        loop {
            match self.drain_once().await {
                Ok(report)
                    if !report.unavailable
                        && report.published + report.failed > 0
                        && report.claimed >= self.settings.batch_size as usize =>
                {
                    continue
                }
                Ok(_) => return,
                Err(error) => {
                    tracing::warn!(%error, "outbox relay: database error; will try again");
                    return;
                }
            }
        }
    }

    /// Runs until `stop` resolves: drains on every notification for this schema and every poll
    /// interval, and prunes published rows past the retention. A batch in progress finishes
    /// before it returns.
    pub async fn run(self, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        let schema = self.table.schema().as_str().to_owned();
        let mut listener: Option<PgListener> = None;
        let mut last_cleanup: Option<Instant> = None;
        let mut last_count: Option<Instant> = None;
        tracing::info!(schema, "outbox relay started");
        loop {
            if listener.is_none() {
                listener = self.listen().await;
            }
            self.drain().await;
            if last_cleanup.is_none_or(|at| at.elapsed() >= self.settings.cleanup_interval) {
                self.prune().await;
                last_cleanup = Some(Instant::now());
            }
            if last_count.is_none_or(|at| at.elapsed() >= PENDING_COUNT_INTERVAL) {
                self.count_pending().await;
                last_count = Some(Instant::now());
            }
            tokio::select! {
                biased;
                _ = &mut stop => break,
                _ = notified(&mut listener, &schema) => {}
                _ = tokio::time::sleep(self.settings.poll_interval) => {}
            }
        }
        tracing::info!(schema, "outbox relay stopped");
    }

    async fn listen(&self) -> Option<PgListener> {
        let result = async {
            let mut listener = PgListener::connect_with(&self.pool).await?;
            listener.listen(NOTIFY_CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        }
        .await;
        match result {
            Ok(listener) => Some(listener),
            Err(error) => {
                tracing::warn!(%error, "outbox relay cannot LISTEN; polling until it can");
                None
            }
        }
    }

    /// Reports the unpublished rows to the observer; on a database error it reports nothing (the
    /// drain has already warned about the database).
    async fn count_pending(&self) {
        match self.table.pending(&self.pool).await {
            Ok(rows) => self.observer.pending(rows),
            Err(error) => tracing::debug!(%error, "counting the unpublished outbox rows failed"),
        }
    }

    async fn prune(&self) {
        loop {
            match self.table.prune(&self.pool, self.settings.retention).await {
                Ok(0) => return,
                Ok(rows) => tracing::info!(rows, "pruned published outbox rows"),
                Err(error) => {
                    tracing::warn!(%error, "pruning the outbox failed; will try again");
                    return;
                }
            }
        }
    }
}

/// Resolves on a notification for `schema`; on a listener error it drops the listener (the loop
/// reconnects it) and resolves, so the table is drained in case a notification was lost.
async fn notified(listener: &mut Option<PgListener>, schema: &str) {
    let Some(active) = listener.as_mut() else {
        return std::future::pending().await;
    };
    loop {
        match active.recv().await {
            Ok(notification) if notification.payload() == schema => return,
            Ok(_) => continue,
            Err(error) => {
                tracing::warn!(%error, "outbox relay lost its LISTEN connection; reconnecting");
                *listener = None;
                return;
            }
        }
    }
}
