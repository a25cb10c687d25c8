//! Order-tolerant handlers: a per-entity version check. Events of one entity may arrive out of
//! order (parallel consumers, retries that overtake); a handler that carries a per-entity version
//! in its events applies only versions newer than the last one it applied, and skips the rest.
//!
//! [`apply_if_newer`] runs inside the dedup transaction, so the recorded version, the handler's
//! writes and the dedup row commit together. Use it when an event carries the entity's **full
//! state** (or an idempotent "set" of some fields) and a later version supersedes an earlier
//! one; a stale event is then safely skipped. It does not fit events whose effects must all be
//! applied in sequence (increments, appends): partition those instead, so they are handled in
//! publish order.
//!
//! ## An event for an entity that does not exist yet
//!
//! With the version check, a later event can arrive before the event that creates the entity.
//! Two documented ways:
//!
//! - **Skip until created** — when the handler needs the entity's row (e.g. `OrderShipped`
//!   before `OrderPlaced`): return a retryable error (`HandlerError::retryable("OrderNotYetCreated: ...")`)
//!   *before* calling `apply_if_newer`, so nothing is recorded; the event comes back through the
//!   broker's delay path and is applied once the create event has committed (or is
//!   dead-lettered when it never comes, with a reason that says so). Do not `return Ok(())`: that
//!   would lose the event.
//! - **Create partial** — when the event carries enough to start the row: upsert a row marked
//!   partial with what the event carries (`INSERT ... ON CONFLICT DO UPDATE` of its own columns);
//!   the create event, arriving later with a lower version, is then *stale* for the fields the
//!   newer event set — so record versions per concern (one `handler`/entity key per group of
//!   fields, e.g. `entity_id = "ord_1/status"`) or let the create event fill only the columns
//!   that are still NULL.

pub(crate) mod freshness;
pub(crate) mod migrations;

pub use freshness::{applied_version, apply_if_newer, Freshness};

use sqlx::PgPool;

use crate::dedup::identifier::Identifier;
use crate::migrations::MigrationError;

/// Brings the `entity_versions` table in `schema` up to date (the versioning component of
/// [`crate::transport::migrations`]).
pub async fn migrate(pool: &PgPool, schema: &Identifier) -> Result<(), MigrationError> {
    crate::migrations::run(pool, schema, &[&migrations::COMPONENT])
        .await
        .map(drop)
}
