//! The transactional outbox: write events to a table in the same transaction as the business
//! write ([`Outbox::enqueue`]); a relay ([`relay::RelayLoop`], run by the transport) publishes
//! them with publisher confirms and marks them published. Downstream events go out if and only
//! if the transaction commits — the dual write without its failure mode.
//!
//! One concept per file: [`migrations`] (the table), [`event`] (what to publish),
//! [`enqueue`] (the write), [`table`] (the relay's statements), [`relay`] (the loop and its
//! guarantees), [`settings`].

pub(crate) mod enqueue;
pub(crate) mod event;
pub(crate) mod migrations;
pub(crate) mod relay;
pub(crate) mod settings;
pub(crate) mod table;

pub use enqueue::{EnqueueError, Enqueued, Outbox};
pub use event::OutboxEvent;
pub use relay::{OutboxMessage, OutboxSink, RelayLoop, RelayObserver, SinkError};
pub use settings::OutboxSettings;
pub use table::OutboxTable;

use sqlx::PgPool;

use crate::dedup::identifier::Identifier;
use crate::migrations::MigrationError;

/// Brings the outbox table in `schema` up to date (the outbox component of
/// [`crate::transport::migrations`]).
pub async fn migrate(pool: &PgPool, schema: &Identifier) -> Result<(), MigrationError> {
    crate::migrations::run(pool, schema, &[&migrations::COMPONENT])
        .await
        .map(drop)
}
