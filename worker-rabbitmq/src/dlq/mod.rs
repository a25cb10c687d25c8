//! Browsing, replaying and purging dead-letter queues without side effects on the entries left
//! in place (see `docs/decisions.md`, "DLQ browsing").
//!
//! A dead-letter queue is a classic durable queue. To read it, [`HeldQueue::hold`] takes every
//! entry with `basic.get` *without acking*; closing the channel returns the unacked entries to
//! their original positions. Classic queues keep no delivery counter, so browsing never pushes an
//! entry towards a delivery limit, and the order, count and content stay as they were. Replay
//! and purge ack exactly the entries they removed, and only after the replay's publish was
//! confirmed.

pub mod browse;
pub mod filter;
pub mod fingerprint;
pub mod ingest;
pub mod replay;

pub use browse::{Entry, HeldQueue};
pub use filter::Filter;
pub use fingerprint::fingerprint;
pub use replay::replay_message;

/// Why a dead-letter operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    /// A broker operation failed.
    #[error("RabbitMQ: {action}: {source}")]
    Broker {
        /// What was being done.
        action: String,
        /// The client's error.
        source: lapin::Error,
    },
    /// The dead-letter store failed.
    #[error("dead-letter store (PostgreSQL): {action}: {source}")]
    Store {
        /// What was being done.
        action: String,
        /// The driver's error.
        source: sqlx::Error,
    },
    /// The record's body cannot be restored.
    #[error("the record of event {event_id:?} in `{queue}` has a body that is not valid base64 ({source}); it cannot be replayed byte for byte")]
    CorruptBody {
        /// The dead-letter queue.
        queue: String,
        /// The event id.
        event_id: Option<String>,
        /// The decoder's error.
        source: base64::DecodeError,
    },
    /// The entry is not a dead-letter record.
    #[error("an entry in `{queue}` is not a dead-letter record ({reason}); it cannot be replayed (inspect it with `dlq show`, remove it with `dlq purge`)")]
    NotARecord {
        /// The dead-letter queue.
        queue: String,
        /// Why it did not parse.
        reason: String,
    },
    /// The replay publish failed; the entry stays in the dead-letter queue.
    #[error("replaying event {event_id:?} to `{queue}` failed, the entry stays in the dead-letter queue: {source}")]
    Publish {
        /// The work queue.
        queue: String,
        /// The event id.
        event_id: Option<String>,
        /// The publisher's error.
        source: crate::publisher::PublishError,
    },
}

impl DlqError {
    pub(crate) fn broker(action: impl Into<String>) -> impl FnOnce(lapin::Error) -> DlqError {
        let action = action.into();
        move |source| DlqError::Broker { action, source }
    }
}
