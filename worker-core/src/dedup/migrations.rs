//! The dedup store's embedded migrations: idempotent DDL run at start-up under an advisory lock,
//! so several workers starting at once do not race.

use sqlx::PgPool;

use super::identifier::Identifier;

/// Advisory lock key shared by every worker's start-up migration (`"wkr-migr"` in ASCII).
const MIGRATION_LOCK_KEY: i64 = 0x776b_722d_6d69_6772;

/// Creates the schema and the `processed_events` table if they do not exist.
pub async fn run(pool: &PgPool, schema: &Identifier) -> Result<(), sqlx::Error> {
    let schema = schema.quoted();
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATION_LOCK_KEY)
        .execute(&mut *tx)
        .await?;
    sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
        .execute(&mut *tx)
        .await?;
    sqlx::query(&format!(
        "CREATE TABLE IF NOT EXISTS {schema}.processed_events (
            handler      TEXT        NOT NULL,
            event_id     TEXT        NOT NULL,
            processed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            PRIMARY KEY (handler, event_id)
        )"
    ))
    .execute(&mut *tx)
    .await?;
    sqlx::query(&format!(
        "CREATE INDEX IF NOT EXISTS processed_events_processed_at_idx ON {schema}.processed_events (processed_at)"
    ))
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}
