//! The `entity_versions` table's embedded migration (idempotent, under the start-up advisory
//! lock):
//!
//! ```sql
//! CREATE TABLE <schema>.entity_versions (
//!   handler    TEXT        NOT NULL,   -- each handler tracks its own progress
//!   entity_id  TEXT        NOT NULL,
//!   version    BIGINT      NOT NULL,   -- the last version applied
//!   applied_at TIMESTAMPTZ NOT NULL DEFAULT now(),
//!   PRIMARY KEY (handler, entity_id)
//! );
//! ```

use sqlx::PgPool;

use crate::dedup::identifier::Identifier;

/// Advisory lock key shared by every worker's start-up migration (`"wkr-migr"` in ASCII).
const MIGRATION_LOCK_KEY: i64 = 0x776b_722d_6d69_6772;

/// Creates the schema and the `entity_versions` table if missing.
pub async fn run(pool: &PgPool, schema: &Identifier) -> Result<(), sqlx::Error> {
    let s = schema.quoted();
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATION_LOCK_KEY)
        .execute(&mut *tx)
        .await?;
    sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {s}"))
        .execute(&mut *tx)
        .await?;
    sqlx::query(&format!(
        "CREATE TABLE IF NOT EXISTS {s}.entity_versions (
            handler    TEXT        NOT NULL,
            entity_id  TEXT        NOT NULL,
            version    BIGINT      NOT NULL,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            PRIMARY KEY (handler, entity_id)
        )"
    ))
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}
