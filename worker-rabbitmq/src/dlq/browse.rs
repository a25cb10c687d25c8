//! Holding a dead-letter queue's entries without consuming them.

use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};
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
    delivery_tag: u64,
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
    channel: Channel,
    /// The queue.
    pub queue: String,
    /// The entries, oldest first.
    pub entries: Vec<Entry>,
}

impl HeldQueue {
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
                    channel,
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
                delivery_tag: delivery.delivery_tag,
            });
        }
        Ok(HeldQueue {
            channel,
            queue: queue.into(),
            entries,
        })
    }

    /// Removes one held entry from the queue for good (acks it).
    pub async fn remove(&self, entry: &Entry) -> Result<(), DlqError> {
        self.channel
            .basic_ack(entry.delivery_tag, BasicAckOptions::default())
            .await
            .map_err(DlqError::broker(format!(
                "remove an entry from `{}`",
                self.queue
            )))
    }

    /// Gives every entry not removed back to its original position.
    pub async fn release(self) {
        // Closing the channel requeues its unacked messages where they were.
        let _ = self
            .channel
            .close(200, "dead-letter browse done".into())
            .await;
    }
}
