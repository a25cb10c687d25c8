//! Recording processed events inside the handler's transaction.

use std::time::Duration;

use sqlx::{PgConnection, PgPool};

use super::identifier::Identifier;

/// The dedup table of one schema: `<schema>.processed_events`.
#[derive(Debug, Clone)]
pub struct DedupStore {
    insert_sql: String,
    prune_sql: String,
    schema: Identifier,
}

impl DedupStore {
    /// The store in `schema` (already validated).
    pub fn new(schema: Identifier) -> Self {
        let table = format!("{}.processed_events", schema.quoted());
        Self {
            insert_sql: format!(
                "INSERT INTO {table} (handler, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING 1"
            ),
            prune_sql: format!(
                "DELETE FROM {table} WHERE ctid IN (SELECT ctid FROM {table} WHERE processed_at < now() - $1::interval LIMIT 10000)"
            ),
            schema,
        }
    }

    /// The schema the table lives in.
    pub fn schema(&self) -> &Identifier {
        &self.schema
    }

    /// Creates the schema and table if missing (the embedded migration).
    pub async fn migrate(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        super::migrations::run(pool, &self.schema).await
    }

    /// Claims `(handler, event_id)` in the caller's transaction. `true`: first time, go ahead;
    /// `false`: already processed (or being processed by a concurrent transaction that then
    /// committed), skip. A concurrent uncommitted claim makes this wait for that transaction.
    pub async fn claim(
        &self,
        tx: &mut PgConnection,
        handler: &str,
        event_id: &str,
    ) -> Result<bool, sqlx::Error> {
        let row: Option<i32> = sqlx::query_scalar(&self.insert_sql)
            .bind(handler)
            .bind(event_id)
            .fetch_optional(tx)
            .await?;
        Ok(row.is_some())
    }

    /// Deletes up to 10,000 rows older than `retention`; returns how many it deleted.
    pub async fn prune(&self, pool: &PgPool, retention: Duration) -> Result<u64, sqlx::Error> {
        let interval = format!("{} milliseconds", retention.as_millis());
        Ok(sqlx::query(&self.prune_sql)
            .bind(interval)
            .execute(pool)
            .await?
            .rows_affected())
    }
}
