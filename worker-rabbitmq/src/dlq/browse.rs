//! Holding a dead-letter queue's entries without consuming them.

use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};
use sqlx::PgPool;
use worker_core::transport::dead_letter::{DeadLetterStore, RowStatus, Selection, StoredRow};
use worker_core::transport::message::Properties;
use worker_core::DeadLetterRecord;

use super::DlqError;

/// One dead-letter entry as it sits in its queue.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The dead-letter queue it is in.
    pub queue: String,
    /// Its position in that queue (0 = the oldest).
    pub position: usize,
    /// The parsed record, or why the body is not one.
    pub record: Result<DeadLetterRecord, String>,
    /// The raw message body, as stored.
    pub body: Vec<u8>,
    /// The message's AMQP properties.
    pub properties: BasicProperties,
    /// Where it is held: a delivery on the browsing channel, or a row of the store.
    held_as: HeldAs,
}

#[derive(Debug, Clone, Copy)]
enum HeldAs {
    Delivery(u64),
    Row(i64),
}

impl Entry {
    /// The event id: the record's, else the message's `message_id`.
    pub fn event_id(&self) -> Option<String> {
        match &self.record {
            Ok(record) => record.original_message.id.clone(),
            Err(_) => self.properties.message_id().as_ref().map(|s| s.to_string()),
        }
    }
}

/// Every entry of one dead-letter queue, held unacked on a channel of its own.
///
/// Dropping or [`release`](Self::release)-ing it returns the entries that were not
/// [`remove`](Self::remove)d to their original positions (a classic queue requeues an unacked
/// message where it was). If the process dies while holding, the broker does the same when the
/// connection closes.
#[derive(Debug)]
pub struct HeldQueue {
    source: Source,
    /// The queue.
    pub queue: String,
    /// The entries, oldest first.
    pub entries: Vec<Entry>,
}

/// Where the entries come from.
#[derive(Debug)]
enum Source {
    /// The queue itself, read on this channel.
    Queue(Channel),
    /// The dead-letter store (the default; `WORKER_DLQ_STORE=off` reads the queues).
    Store {
        pool: PgPool,
        store: DeadLetterStore,
    },
}

impl HeldQueue {
    /// The pending rows of the store that `selection` picks, for the dead-letter queue `queue`
    /// (nothing is held: removing an entry marks its row).
    pub async fn from_store(
        pool: &PgPool,
        store: &DeadLetterStore,
        queue: &str,
        selection: &Selection,
    ) -> Result<HeldQueue, DlqError> {
        let rows = store
            .select(pool, selection)
            .await
            .map_err(|source| DlqError::Store {
                action: format!("read the dead letters of `{queue}`"),
                source,
            })?;
        let entries = rows
            .into_iter()
            .enumerate()
            .map(|(position, row)| stored_entry(position, row))
            .collect();
        Ok(HeldQueue {
            source: Source::Store {
                pool: pool.clone(),
                store: store.clone(),
            },
            queue: queue.into(),
            entries,
        })
    }

    /// Takes every entry now in `queue` without acking it. Entries dead-lettered while the scan
    /// runs are left for the next one (at most the depth seen at the start is taken). A queue
    /// that does not exist holds nothing.
    pub async fn hold(connection: &Connection, queue: &str) -> Result<HeldQueue, DlqError> {
        let channel = connection
            .create_channel()
            .await
            .map_err(DlqError::broker("open a channel"))?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let depth = match channel
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await
        {
            Ok(state) => state.message_count() as usize,
            Err(_) => {
                // Not declared yet: nothing was ever dead-lettered there. The failed passive
                // declare closed that channel; a fresh one keeps the type uniform.
                let channel = connection
                    .create_channel()
                    .await
                    .map_err(DlqError::broker("open a channel"))?;
                return Ok(HeldQueue {
                    source: Source::Queue(channel),
                    queue: queue.into(),
                    entries: Vec::new(),
                });
            }
        };
        let mut entries = Vec::with_capacity(depth);
        while entries.len() < depth {
            let got = channel
                .basic_get(queue.into(), BasicGetOptions { no_ack: false })
                .await
                .map_err(DlqError::broker(format!("read `{queue}`")))?;
            let Some(message) = got else { break };
            let delivery = message.delivery;
            let record = serde_json::from_slice::<DeadLetterRecord>(&delivery.data)
                .map_err(|e| e.to_string());
            entries.push(Entry {
                queue: queue.into(),
                position: entries.len(),
                record,
                body: delivery.data,
                properties: delivery.properties,
                held_as: HeldAs::Delivery(delivery.delivery_tag),
            });
        }
        Ok(HeldQueue {
            source: Source::Queue(channel),
            queue: queue.into(),
            entries,
        })
    }

    /// Marks a row of the store replayed with a corrected `payload`, recording `changes` (what
    /// differs from the producer's payload). A queue keeps no such record: the caller allows
    /// corrections with the store only.
    pub async fn remove_corrected(
        &self,
        entry: &Entry,
        payload: &serde_json::Value,
        changes: &serde_json::Value,
    ) -> Result<(), DlqError> {
        let (Source::Store { pool, store }, HeldAs::Row(id)) = (&self.source, entry.held_as) else {
            return self.remove(entry, RowStatus::Replayed).await;
        };
        let marked = store
            .mark_corrected(pool, id, payload, changes)
            .await
            .map_err(|source| DlqError::Store {
                action: format!(
                    "mark dead letter {id} of `{}` replayed with a corrected payload",
                    self.queue
                ),
                source,
            })?;
        if !marked {
            tracing::warn!(
                id, queue = %self.queue,
                "dead letter was no longer pending (another operator acted on it)"
            );
        }
        Ok(())
    }

    /// Removes one held entry for good: acks it in the queue, or marks its row in the store
    /// `status` (replayed or purged).
    pub async fn remove(&self, entry: &Entry, status: RowStatus) -> Result<(), DlqError> {
        match (&self.source, entry.held_as) {
            (Source::Queue(channel), HeldAs::Delivery(tag)) => channel
                .basic_ack(tag, BasicAckOptions::default())
                .await
                .map_err(DlqError::broker(format!(
                    "remove an entry from `{}`",
                    self.queue
                ))),
            (Source::Store { pool, store }, HeldAs::Row(id)) => {
                let marked =
                    store
                        .mark(pool, id, status)
                        .await
                        .map_err(|source| DlqError::Store {
                            action: format!(
                                "mark dead letter {id} of `{}` {}",
                                self.queue,
                                status.as_str()
                            ),
                            source,
                        })?;
                if !marked {
                    tracing::warn!(
                        id, queue = %self.queue,
                        "dead letter was no longer pending (another operator acted on it)"
                    );
                }
                Ok(())
            }
            _ => unreachable!("an entry is held where its queue was read"),
        }
    }

    /// Gives every entry not removed back to its original position.
    pub async fn release(self) {
        if let Source::Queue(channel) = self.source {
            // Closing the channel requeues its unacked messages where they were.
            let _ = channel.close(200, "dead-letter browse done".into()).await;
        }
    }
}

/// A row of the store as an entry: the record from its JSONB, or the unparsed message's body.
fn stored_entry(position: usize, row: StoredRow) -> Entry {
    let properties = serde_json::from_value::<Properties>(row.properties)
        .ok()
        .and_then(|p| crate::convert::properties_to_amqp(&p).ok())
        .unwrap_or_default();
    let (record, body) = match (row.record, row.raw_body) {
        (Some(value), _) => {
            let body = serde_json::to_vec(&value).unwrap_or_default();
            let record = serde_json::from_value::<DeadLetterRecord>(value)
                .map_err(|e| format!("the stored record does not parse: {e}"));
            (record, body)
        }
        (None, raw) => (
            Err(row
                .parse_error
                .unwrap_or_else(|| "not a dead-letter record".into())),
            raw.unwrap_or_default(),
        ),
    };
    Entry {
        queue: row.queue,
        position,
        record,
        body,
        properties,
        held_as: HeldAs::Row(row.id),
    }
}
