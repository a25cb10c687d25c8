//! The outbox table's embedded migration: idempotent DDL run at start-up under the same advisory
//! lock as the dedup table's, so several workers starting at once do not race.
//!
//! ```sql
//! CREATE TABLE <schema>.outbox (
//!   id           BIGSERIAL   PRIMARY KEY,          -- publish order
//!   event_id     TEXT        NOT NULL,             -- the message_id to publish
//!   aggregate_id TEXT        NOT NULL,             -- order is kept per aggregate
//!   event_type   TEXT        NOT NULL,             -- the routing key
//!   payload      JSONB       NOT NULL,             -- the body
//!   headers      JSONB       NOT NULL DEFAULT '{}', -- traceparent, tracestate, ...
//!   created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
//!   published_at TIMESTAMPTZ,                      -- NULL until the broker confirmed it
//!   attempts     INT         NOT NULL DEFAULT 0,   -- failed publishes
//!   last_error   TEXT,
//!   next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now()
//! );
//! ```
//!
//! plus a partial index on the unpublished rows (what the relay scans) and a statement trigger
//! that sends `NOTIFY worker_outbox, '<schema>'` when rows are inserted; the notification is
//! delivered at commit, and not at all when the transaction rolls back.

use sqlx::PgPool;

use crate::dedup::identifier::Identifier;

/// The channel the insert trigger notifies; the payload is the schema of the table.
pub const NOTIFY_CHANNEL: &str = "worker_outbox";

/// Advisory lock key shared by every worker's start-up migration (`"wkr-migr"` in ASCII; the same
/// key as the dedup table's migration).
const MIGRATION_LOCK_KEY: i64 = 0x776b_722d_6d69_6772;

/// Creates the schema, the `outbox` table, its indexes and its notify trigger if missing.
pub async fn run(pool: &PgPool, schema: &Identifier) -> Result<(), sqlx::Error> {
    let s = schema.quoted();
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATION_LOCK_KEY)
        .execute(&mut *tx)
        .await?;
    let statements = [
        format!("CREATE SCHEMA IF NOT EXISTS {s}"),
        format!(
            "CREATE TABLE IF NOT EXISTS {s}.outbox (
                id              BIGSERIAL   PRIMARY KEY,
                event_id        TEXT        NOT NULL,
                aggregate_id    TEXT        NOT NULL,
                event_type      TEXT        NOT NULL,
                payload         JSONB       NOT NULL,
                headers         JSONB       NOT NULL DEFAULT '{{}}',
                created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
                published_at    TIMESTAMPTZ,
                attempts        INT         NOT NULL DEFAULT 0,
                last_error      TEXT,
                next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now()
            )"
        ),
        format!(
            "CREATE INDEX IF NOT EXISTS outbox_unpublished_idx ON {s}.outbox (id) WHERE published_at IS NULL"
        ),
        format!(
            "CREATE INDEX IF NOT EXISTS outbox_unpublished_aggregate_idx ON {s}.outbox (aggregate_id, id) WHERE published_at IS NULL"
        ),
        format!(
            "CREATE INDEX IF NOT EXISTS outbox_published_at_idx ON {s}.outbox (published_at) WHERE published_at IS NOT NULL"
        ),
        format!(
            "CREATE OR REPLACE FUNCTION {s}.outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 PERFORM pg_notify('{NOTIFY_CHANNEL}', TG_TABLE_SCHEMA);
                 RETURN NULL;
             END $$"
        ),
        // Created only when missing: a DROP + CREATE would lock the table on every start-up.
        format!(
            "DO $$ BEGIN
                 IF NOT EXISTS (SELECT 1 FROM pg_trigger
                                WHERE tgname = 'outbox_notify' AND tgrelid = '{s}.outbox'::regclass) THEN
                     CREATE TRIGGER outbox_notify AFTER INSERT ON {s}.outbox
                     FOR EACH STATEMENT EXECUTE FUNCTION {s}.outbox_notify();
                 END IF;
             END $$"
        ),
    ];
    for statement in statements {
        sqlx::query(&statement).execute(&mut *tx).await?;
    }
    tx.commit().await
}
