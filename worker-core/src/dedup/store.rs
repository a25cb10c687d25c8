//! Recording processed events inside the handler's transaction.

use std::collections::HashSet;
use std::time::Duration;

use sqlx::{PgConnection, PgPool};

use super::identifier::Identifier;
use crate::migrations::MigrationError;

/// The dedup table of one schema: `<schema>.processed_events`.
#[derive(Debug, Clone)]
pub struct DedupStore {
    insert_sql: String,
    insert_many_sql: String,
    delete_sql: String,
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
            // Sorted, so that two transactions claiming overlapping batches take the row locks in
            // the same order and cannot deadlock on each other.
            insert_many_sql: format!(
                "INSERT INTO {table} (handler, event_id) SELECT $1, id FROM unnest($2::text[]) AS id ORDER BY id ON CONFLICT DO NOTHING RETURNING event_id"
            ),
            delete_sql: format!("DELETE FROM {table} WHERE handler = $1 AND event_id = $2"),
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

    /// Brings the schema and the table up to date (the dedup component of
    /// [`crate::transport::migrations`]).
    pub async fn migrate(&self, pool: &PgPool) -> Result<(), MigrationError> {
        crate::migrations::run(pool, &self.schema, &[&super::migrations::COMPONENT])
            .await
            .map(drop)
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

    /// Claims several events in one statement, in the caller's transaction; returns the ids claimed
    /// now (each at most once, whatever the input repeats). The others were already processed.
    pub async fn claim_all(
        &self,
        tx: &mut PgConnection,
        handler: &str,
        event_ids: &[&str],
    ) -> Result<HashSet<String>, sqlx::Error> {
        let rows: Vec<String> = sqlx::query_scalar(&self.insert_many_sql)
            .bind(handler)
            .bind(event_ids)
            .fetch_all(tx)
            .await?;
        Ok(rows.into_iter().collect())
    }

    /// Takes back a claim made earlier in the caller's transaction (its handler failed, and the
    /// transaction goes on for the other events of the batch).
    pub async fn unclaim(
        &self,
        tx: &mut PgConnection,
        handler: &str,
        event_id: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(&self.delete_sql)
            .bind(handler)
            .bind(event_id)
            .execute(tx)
            .await?;
        Ok(())
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
