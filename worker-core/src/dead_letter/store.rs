//! The dead-letter store (`docs/contracts.md` §10): dead-letter records moved out of the
//! dead-letter queues into a Postgres table with indexed columns, so operators' questions are
//! index lookups instead of scans of a queue.
//!
//! ```sql
//! CREATE TABLE <schema>.dead_letters (
//!   id               BIGSERIAL   PRIMARY KEY,
//!   record_key       TEXT        NOT NULL UNIQUE,  -- sha256 of queue, properties and body:
//!                                                  -- a redelivered message is stored once
//!   queue            TEXT        NOT NULL,         -- the dead-letter queue it came from
//!   handler          TEXT        NOT NULL,
//!   event_id         TEXT,                         -- NULL when the producer set none
//!   event_type       TEXT,
//!   trace_id         TEXT,
//!   error_kind       TEXT,                         -- NULL for an unparsed message
//!   fingerprint      TEXT,                         -- computed once, at ingest
//!   attempts         INT,
//!   first_failed_at  TIMESTAMPTZ,
//!   last_failed_at   TIMESTAMPTZ,
//!   dead_lettered_at TIMESTAMPTZ NOT NULL,         -- the last failure, else the ingest time
//!   ingested_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
//!   status           TEXT        NOT NULL DEFAULT 'pending',  -- pending | replayed | purged
//!   replayed_at      TIMESTAMPTZ,
//!   purged_at        TIMESTAMPTZ,                  -- replayed and purged rows are deleted
//!                                                  -- once older than the retention
//!   record           JSONB,                        -- the §5 record (its original body is
//!                                                  -- lossless inside); NULL when unparsed
//!   parse_error      TEXT,                         -- why the body is not a §5 record
//!   raw_body         BYTEA,                        -- that body, byte for byte
//!   properties       JSONB       NOT NULL          -- the DLQ message's properties, typed
//! );
//! ```
//!
//! with indexes for the questions asked at 3 am: by handler and time, by event id, by trace id
//! prefix, by fingerprint, by status and time.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::record::DeadLetterRecord;
use crate::dedup::identifier::Identifier;
use crate::message::inbound::Properties;
use crate::migrations::{Component, Migration, MigrationError};

/// The `dead_letters` table's versions.
pub(crate) const COMPONENT: Component = Component {
    name: "dead_letters",
    migrations: &[
        Migration {
            version: 1,
            description: "dead_letters table and its indexes",
            sql: "CREATE TABLE {schema}.dead_letters (
                  id               BIGSERIAL   PRIMARY KEY,
                  record_key       TEXT        NOT NULL UNIQUE,
                  queue            TEXT        NOT NULL,
                  handler          TEXT        NOT NULL,
                  event_id         TEXT,
                  event_type       TEXT,
                  trace_id         TEXT,
                  error_kind       TEXT,
                  fingerprint      TEXT,
                  attempts         INT,
                  first_failed_at  TIMESTAMPTZ,
                  last_failed_at   TIMESTAMPTZ,
                  dead_lettered_at TIMESTAMPTZ NOT NULL,
                  ingested_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
                  status           TEXT        NOT NULL DEFAULT 'pending'
                                   CHECK (status IN ('pending', 'replayed', 'purged')),
                  replayed_at      TIMESTAMPTZ,
                  purged_at        TIMESTAMPTZ,
                  record           JSONB,
                  parse_error      TEXT,
                  raw_body         BYTEA,
                  properties       JSONB       NOT NULL,
                  CHECK ((record IS NULL) = (raw_body IS NOT NULL))
              );
              CREATE INDEX dead_letters_handler_idx
                  ON {schema}.dead_letters (handler, status, dead_lettered_at);
              CREATE INDEX dead_letters_event_id_idx ON {schema}.dead_letters (event_id);
              CREATE INDEX dead_letters_trace_id_idx
                  ON {schema}.dead_letters (trace_id text_pattern_ops);
              CREATE INDEX dead_letters_fingerprint_idx
                  ON {schema}.dead_letters (fingerprint, status, dead_lettered_at);
              CREATE INDEX dead_letters_status_idx
                  ON {schema}.dead_letters (status, dead_lettered_at);
              CREATE INDEX dead_letters_settled_idx
                  ON {schema}.dead_letters (coalesce(replayed_at, purged_at))
                  WHERE status <> 'pending';",
        },
        Migration {
            version: 2,
            description: "dead_letter_groups counts kept by triggers; replay corrections; \
                          failure-group index by handler",
            sql: GROUPS_SQL,
        },
    ],
};

/// Version 2: `dead_letter_groups` holds the number of rows per handler, status and failure
/// group, kept exact by statement-level triggers (one aggregate per ingested batch, not per
/// row), so `dlq stats` and the metrics read a few rows instead of counting millions. The
/// triggers are created before the backfill: `CREATE TRIGGER` waits for inserts in flight and
/// holds new ones until this transaction commits, so every row is counted exactly once. Also the
/// columns a replay with a corrected payload fills in, and the failure-group index led by the
/// handler (the tools always ask per handler).
const GROUPS_SQL: &str = "CREATE TABLE {schema}.dead_letter_groups (
        handler     TEXT   NOT NULL,
        status      TEXT   NOT NULL,
        fingerprint TEXT   NOT NULL,  -- '' for messages that are not records
        error_kind  TEXT   NOT NULL,  -- '' likewise
        count       BIGINT NOT NULL,
        PRIMARY KEY (handler, status, fingerprint)
    );
    CREATE FUNCTION {schema}.dead_letter_groups_count() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP IN ('UPDATE', 'DELETE') THEN
            UPDATE {schema}.dead_letter_groups AS g SET count = g.count - o.n
            FROM (SELECT handler, status, coalesce(fingerprint, '') AS fingerprint,
                         count(*) AS n
                  FROM old_rows GROUP BY 1, 2, 3) AS o
            WHERE g.handler = o.handler AND g.status = o.status
              AND g.fingerprint = o.fingerprint;
        END IF;
        IF TG_OP IN ('INSERT', 'UPDATE') THEN
            -- In key order, so concurrent batches lock the group rows in the same order.
            INSERT INTO {schema}.dead_letter_groups AS g
                   (handler, status, fingerprint, error_kind, count)
            SELECT handler, status, coalesce(fingerprint, ''), coalesce(min(error_kind), ''),
                   count(*)
            FROM new_rows GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
            ON CONFLICT (handler, status, fingerprint)
            DO UPDATE SET count = g.count + excluded.count;
        END IF;
        RETURN NULL;
    END $$;
    CREATE TRIGGER dead_letter_groups_insert AFTER INSERT ON {schema}.dead_letters
        REFERENCING NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION {schema}.dead_letter_groups_count();
    CREATE TRIGGER dead_letter_groups_update AFTER UPDATE ON {schema}.dead_letters
        REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION {schema}.dead_letter_groups_count();
    CREATE TRIGGER dead_letter_groups_delete AFTER DELETE ON {schema}.dead_letters
        REFERENCING OLD TABLE AS old_rows
        FOR EACH STATEMENT EXECUTE FUNCTION {schema}.dead_letter_groups_count();
    INSERT INTO {schema}.dead_letter_groups (handler, status, fingerprint, error_kind, count)
    SELECT handler, status, coalesce(fingerprint, ''), coalesce(min(error_kind), ''), count(*)
    FROM {schema}.dead_letters GROUP BY 1, 2, 3;
    ALTER TABLE {schema}.dead_letters
        ADD COLUMN replayed_payload JSONB,
        ADD COLUMN payload_changes  JSONB;
    DROP INDEX {schema}.dead_letters_fingerprint_idx;
    CREATE INDEX dead_letters_group_idx
        ON {schema}.dead_letters (handler, status, fingerprint, dead_lettered_at);";

/// One message of a dead-letter queue, ready to be stored: a §5 record, or whatever else
/// someone published into the queue (kept byte for byte, with why it is not a record).
#[derive(Debug, Clone)]
pub struct StoredDeadLetter {
    /// The dead-letter queue it came from.
    pub queue: String,
    /// The handler whose queue it is.
    pub handler: String,
    /// The message's body, exactly as it was in the queue.
    pub body: Vec<u8>,
    /// The message's properties.
    pub properties: Properties,
    /// The parsed record, or why the body is not one.
    pub record: Result<DeadLetterRecord, String>,
    /// The failure group of the record (its error kind and the first line of its last error,
    /// numbers and ids masked), `None` when unparsed.
    pub fingerprint: Option<String>,
}

impl StoredDeadLetter {
    /// The idempotency key: SHA-256 of the queue, the properties and the body. A message
    /// redelivered after a crash has the same key and is stored once; two dead letters of one
    /// event differ in their timestamps, so both are kept.
    pub fn key(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        hash.update(self.queue.as_bytes());
        hash.update([0]);
        hash.update(serde_json::to_vec(&self.properties).unwrap_or_default());
        hash.update([0]);
        hash.update(&self.body);
        crate::trace_context::hex(&hash.finalize())
    }
}

/// The `dead_letters` table of one schema.
#[derive(Debug, Clone)]
pub struct DeadLetterStore {
    schema: Identifier,
    insert_sql: String,
}

impl DeadLetterStore {
    /// The store in `schema`.
    pub fn new(schema: Identifier) -> Self {
        let table = format!("{}.dead_letters", schema.quoted());
        let insert_sql = format!(
            "INSERT INTO {table} (record_key, queue, handler, event_id, event_type, trace_id, \
             error_kind, fingerprint, attempts, first_failed_at, last_failed_at, \
             dead_lettered_at, record, parse_error, raw_body, properties) \
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
             $6::text[], $7::text[], $8::text[], $9::int[], $10::timestamptz[], \
             $11::timestamptz[], $12::timestamptz[], $13::jsonb[], $14::text[], $15::bytea[], \
             $16::jsonb[]) \
             ON CONFLICT (record_key) DO NOTHING"
        );
        Self { schema, insert_sql }
    }

    /// The schema the table lives in.
    pub fn schema(&self) -> &Identifier {
        &self.schema
    }

    /// Creates or upgrades the table.
    pub async fn migrate(&self, pool: &PgPool) -> Result<(), MigrationError> {
        crate::migrations::run(pool, &self.schema, &[&COMPONENT])
            .await
            .map(drop)
    }

    /// Stores `letters` in one statement (atomic: all or none); a letter stored before (same
    /// [`key`](StoredDeadLetter::key)) is skipped. Returns how many were new.
    pub async fn insert(
        &self,
        pool: &PgPool,
        letters: &[StoredDeadLetter],
        now: DateTime<Utc>,
    ) -> Result<u64, sqlx::Error> {
        let mut columns = Columns::default();
        for letter in letters {
            columns.push(letter, now);
        }
        let done = sqlx::query(&self.insert_sql)
            .bind(columns.key)
            .bind(columns.queue)
            .bind(columns.handler)
            .bind(columns.event_id)
            .bind(columns.event_type)
            .bind(columns.trace_id)
            .bind(columns.error_kind)
            .bind(columns.fingerprint)
            .bind(columns.attempts)
            .bind(columns.first_failed_at)
            .bind(columns.last_failed_at)
            .bind(columns.dead_lettered_at)
            .bind(columns.record)
            .bind(columns.parse_error)
            .bind(columns.raw_body)
            .bind(columns.properties)
            .execute(pool)
            .await?;
        Ok(done.rows_affected())
    }
}

/// What a row of the store is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowStatus {
    /// Waiting for an operator.
    Pending,
    /// Republished to its handler's queue (confirmed).
    Replayed,
    /// Removed by an operator.
    Purged,
}

impl RowStatus {
    /// The value in the `status` column.
    pub fn as_str(self) -> &'static str {
        match self {
            RowStatus::Pending => "pending",
            RowStatus::Replayed => "replayed",
            RowStatus::Purged => "purged",
        }
    }
}

/// Which rows [`DeadLetterStore::select`] returns: every criterion that is set must match.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// The handler.
    pub handler: Option<String>,
    /// Event ids (empty: any).
    pub event_ids: Vec<String>,
    /// A prefix of the trace id (case-insensitive).
    pub trace_id_prefix: Option<String>,
    /// The event type.
    pub event_type: Option<String>,
    /// `poison` or `retryable`.
    pub error_kind: Option<String>,
    /// The failure group.
    pub fingerprint: Option<String>,
    /// Dead-lettered at or after.
    pub since: Option<DateTime<Utc>>,
    /// Dead-lettered before.
    pub until: Option<DateTime<Utc>>,
    /// The row's status (`None`: any).
    pub status: Option<RowStatus>,
    /// At most this many rows, oldest first.
    pub limit: Option<i64>,
}

/// One row of the store, as the operators' tools read it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredRow {
    /// The row id (ingest order).
    pub id: i64,
    /// The dead-letter queue it came from.
    pub queue: String,
    /// Its handler.
    pub handler: String,
    /// The §5 record, `None` when the message was not one.
    pub record: Option<serde_json::Value>,
    /// Why it was not a record.
    pub parse_error: Option<String>,
    /// The body of a message that was not a record.
    pub raw_body: Option<Vec<u8>>,
    /// The dead-letter message's properties.
    pub properties: serde_json::Value,
    /// `pending`, `replayed` or `purged`.
    pub status: String,
}

impl DeadLetterStore {
    /// The rows `selection` picks, oldest first.
    pub async fn select(
        &self,
        pool: &PgPool,
        selection: &Selection,
    ) -> Result<Vec<StoredRow>, sqlx::Error> {
        let mut query = sqlx::QueryBuilder::new(
            "SELECT id, queue, handler, record, parse_error, raw_body, properties, status ",
        );
        self.push_from_where(&mut query, selection);
        query.push(" ORDER BY id");
        if let Some(limit) = selection.limit {
            query.push(" LIMIT ").push_bind(limit);
        }
        query.build_query_as().fetch_all(pool).await
    }

    /// `FROM <table> WHERE ...` for `selection`.
    fn push_from_where<'a>(
        &self,
        query: &mut sqlx::QueryBuilder<'a, sqlx::Postgres>,
        selection: &'a Selection,
    ) {
        query.push(format!(
            "FROM {}.dead_letters WHERE true",
            self.schema.quoted()
        ));
        if let Some(handler) = &selection.handler {
            query.push(" AND handler = ").push_bind(handler.clone());
        }
        if !selection.event_ids.is_empty() {
            query
                .push(" AND event_id = ANY(")
                .push_bind(selection.event_ids.clone())
                .push(")");
        }
        if let Some(prefix) = &selection.trace_id_prefix {
            // Trace ids are stored in lowercase hex; LIKE's wildcards in the prefix are escaped.
            let escaped = prefix
                .to_ascii_lowercase()
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            query
                .push(" AND trace_id LIKE ")
                .push_bind(format!("{escaped}%"));
        }
        if let Some(kind) = &selection.event_type {
            query.push(" AND event_type = ").push_bind(kind.clone());
        }
        if let Some(kind) = &selection.error_kind {
            query.push(" AND error_kind = ").push_bind(kind.clone());
        }
        if let Some(fingerprint) = &selection.fingerprint {
            query
                .push(" AND fingerprint = ")
                .push_bind(fingerprint.clone());
        }
        if let Some(since) = selection.since {
            query.push(" AND dead_lettered_at >= ").push_bind(since);
        }
        if let Some(until) = selection.until {
            query.push(" AND dead_lettered_at < ").push_bind(until);
        }
        if let Some(status) = selection.status {
            query.push(" AND status = ").push_bind(status.as_str());
        }
    }

    /// Marks row `id` replayed or purged; `false` when it was not pending any more (another
    /// operator got there first).
    pub async fn mark(
        &self,
        pool: &PgPool,
        id: i64,
        status: RowStatus,
    ) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(&format!(
            "UPDATE {}.dead_letters SET status = $2, \
             replayed_at = CASE WHEN $2 = 'replayed' THEN now() ELSE replayed_at END, \
             purged_at = CASE WHEN $2 = 'purged' THEN now() ELSE purged_at END \
             WHERE id = $1 AND status = 'pending'",
            self.schema.quoted()
        ))
        .bind(id)
        .bind(status.as_str())
        .execute(pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

impl DeadLetterStore {
    /// Marks row `id` replayed with a corrected payload, recording the payload that was
    /// published and `changes` (what differs from the original); `false` when the row was not
    /// pending any more.
    pub async fn mark_corrected(
        &self,
        pool: &PgPool,
        id: i64,
        payload: &serde_json::Value,
        changes: &serde_json::Value,
    ) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(&format!(
            "UPDATE {}.dead_letters SET status = 'replayed', replayed_at = now(), \
             replayed_payload = $2, payload_changes = $3 \
             WHERE id = $1 AND status = 'pending'",
            self.schema.quoted()
        ))
        .bind(id)
        .bind(payload)
        .bind(changes)
        .execute(pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

/// One failure group of a handler, counted by [`DeadLetterStore::groups`].
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct GroupRow {
    /// The handler.
    pub handler: String,
    /// The fingerprint; `None` for messages that are not records.
    pub fingerprint: Option<String>,
    /// `poison` or `retryable`; `None` for messages that are not records.
    pub error_kind: Option<String>,
    /// How many rows.
    pub count: i64,
    /// The earliest first failure.
    pub oldest: Option<DateTime<Utc>>,
    /// The latest last failure.
    pub newest: Option<DateTime<Utc>>,
    /// One event id of the group.
    pub example: Option<String>,
}

impl DeadLetterStore {
    /// The rows `selection` picks, counted by handler and failure group. A selection by handler,
    /// status, error kind and fingerprint only (what `dlq stats` and the metrics ask) reads the
    /// counts kept in `dead_letter_groups`, and one index lookup per group for its oldest and
    /// newest dead letter; any other criterion counts the matching rows.
    pub async fn groups(
        &self,
        pool: &PgPool,
        selection: &Selection,
    ) -> Result<Vec<GroupRow>, sqlx::Error> {
        let counted = selection.event_ids.is_empty()
            && selection.trace_id_prefix.is_none()
            && selection.event_type.is_none()
            && selection.since.is_none()
            && selection.until.is_none();
        if !counted {
            let mut query = sqlx::QueryBuilder::new(
                "SELECT handler, fingerprint, min(error_kind) AS error_kind, count(*) AS count, \
                 min(first_failed_at) AS oldest, max(last_failed_at) AS newest, \
                 min(event_id) AS example ",
            );
            self.push_from_where(&mut query, selection);
            query.push(" GROUP BY handler, fingerprint");
            return query.build_query_as().fetch_all(pool).await;
        }
        let schema = self.schema.quoted();
        let mut query = sqlx::QueryBuilder::new(format!(
            "SELECT handler, status, fingerprint, error_kind, sum(count)::bigint AS count \
             FROM {schema}.dead_letter_groups WHERE count > 0"
        ));
        if let Some(handler) = &selection.handler {
            query.push(" AND handler = ").push_bind(handler.clone());
        }
        if let Some(status) = selection.status {
            query.push(" AND status = ").push_bind(status.as_str());
        }
        if let Some(kind) = &selection.error_kind {
            query.push(" AND error_kind = ").push_bind(kind.clone());
        }
        if let Some(fingerprint) = &selection.fingerprint {
            query
                .push(" AND fingerprint = ")
                .push_bind(fingerprint.clone());
        }
        query.push(" GROUP BY handler, status, fingerprint, error_kind");
        let counts: Vec<(String, String, String, String, i64)> =
            query.build_query_as().fetch_all(pool).await?;
        // Per (handler, fingerprint): the count over the statuses asked for, and each status's
        // oldest and newest row, found through `dead_letters_group_idx`.
        let mut groups: Vec<GroupRow> = Vec::new();
        for (handler, status, fingerprint, kind, count) in counts {
            let fingerprint = (!fingerprint.is_empty()).then_some(fingerprint);
            let ends = format!(
                "SELECT (SELECT first_failed_at FROM {schema}.dead_letters WHERE {w} \
                         ORDER BY dead_lettered_at LIMIT 1), \
                        (SELECT coalesce(last_failed_at, dead_lettered_at) \
                         FROM {schema}.dead_letters WHERE {w} \
                         ORDER BY dead_lettered_at DESC LIMIT 1), \
                        (SELECT event_id FROM {schema}.dead_letters WHERE {w} \
                         ORDER BY dead_lettered_at LIMIT 1)",
                w = match fingerprint {
                    Some(_) => "handler = $1 AND status = $2 AND fingerprint = $3",
                    None =>
                        "handler = $1 AND status = $2 AND fingerprint IS NULL \
                             AND $3::text IS NULL",
                }
            );
            let (oldest, newest, example): (
                Option<DateTime<Utc>>,
                Option<DateTime<Utc>>,
                Option<String>,
            ) = sqlx::query_as(&ends)
                .bind(&handler)
                .bind(&status)
                .bind(&fingerprint)
                .fetch_one(pool)
                .await?;
            match groups
                .iter_mut()
                .find(|g| g.handler == handler && g.fingerprint == fingerprint)
            {
                Some(group) => {
                    group.count += count;
                    group.oldest = min_option(group.oldest, oldest, false);
                    group.newest = min_option(group.newest, newest, true);
                    if oldest.is_some() && group.oldest == oldest {
                        group.example = example;
                    }
                }
                None => groups.push(GroupRow {
                    handler,
                    fingerprint,
                    error_kind: (!kind.is_empty()).then_some(kind),
                    count,
                    oldest,
                    newest,
                    example,
                }),
            }
        }
        Ok(groups)
    }

    /// Pending dead letters per handler and failure group, from the kept counts: the metrics'
    /// source, cheap enough to read every scrape interval.
    pub async fn pending_counts(
        &self,
        pool: &PgPool,
    ) -> Result<Vec<(String, String, i64)>, sqlx::Error> {
        sqlx::query_as(&format!(
            "SELECT handler, fingerprint, count FROM {}.dead_letter_groups \
             WHERE status = 'pending' AND count > 0",
            self.schema.quoted()
        ))
        .fetch_all(pool)
        .await
    }

    /// Deletes up to 10,000 replayed or purged rows whose replay or purge is older than
    /// `retention`; returns how many. Pending rows never expire.
    pub async fn prune(&self, pool: &PgPool, retention: Duration) -> Result<u64, sqlx::Error> {
        let table = format!("{}.dead_letters", self.schema.quoted());
        let done = sqlx::query(&format!(
            "DELETE FROM {table} WHERE id IN (SELECT id FROM {table} \
             WHERE status <> 'pending' \
             AND coalesce(replayed_at, purged_at) < now() - $1::interval LIMIT 10000)"
        ))
        .bind(format!("{} milliseconds", retention.as_millis()))
        .execute(pool)
        .await?;
        // Groups whose every row is gone; a concurrent insert re-creates its group.
        sqlx::query(&format!(
            "DELETE FROM {}.dead_letter_groups WHERE count = 0",
            self.schema.quoted()
        ))
        .execute(pool)
        .await?;
        Ok(done.rows_affected())
    }
}

/// The earlier (`later` false) or later of two optional times.
fn min_option(
    a: Option<DateTime<Utc>>,
    b: Option<DateTime<Utc>>,
    later: bool,
) -> Option<DateTime<Utc>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if later { a.max(b) } else { a.min(b) }),
        (a, b) => a.or(b),
    }
}

/// The insert's parameters, one array per column.
#[derive(Default)]
struct Columns {
    key: Vec<String>,
    queue: Vec<String>,
    handler: Vec<String>,
    event_id: Vec<Option<String>>,
    event_type: Vec<Option<String>>,
    trace_id: Vec<Option<String>>,
    error_kind: Vec<Option<String>>,
    fingerprint: Vec<Option<String>>,
    attempts: Vec<Option<i32>>,
    first_failed_at: Vec<Option<DateTime<Utc>>>,
    last_failed_at: Vec<Option<DateTime<Utc>>>,
    dead_lettered_at: Vec<DateTime<Utc>>,
    record: Vec<Option<serde_json::Value>>,
    parse_error: Vec<Option<String>>,
    raw_body: Vec<Option<Vec<u8>>>,
    properties: Vec<serde_json::Value>,
}

impl Columns {
    fn push(&mut self, letter: &StoredDeadLetter, now: DateTime<Utc>) {
        self.key.push(letter.key());
        self.queue.push(letter.queue.clone());
        self.handler.push(letter.handler.clone());
        match &letter.record {
            Ok(record) => {
                let meta = &record.failure_metadata;
                self.event_id.push(record.original_message.id.clone());
                self.event_type
                    .push(Some(record.original_message.kind.clone()));
                self.trace_id.push(Some(meta.trace_id.clone()));
                self.error_kind
                    .push(Some(meta.error_kind.as_str().to_owned()));
                self.attempts
                    .push(Some(i32::try_from(meta.attempts).unwrap_or(i32::MAX)));
                self.first_failed_at.push(Some(meta.first_failed_at));
                self.last_failed_at.push(Some(meta.last_failed_at));
                // The record is published when the last attempt fails.
                self.dead_lettered_at.push(meta.last_failed_at);
                self.record.push(serde_json::to_value(record).ok());
                self.parse_error.push(None);
                self.raw_body.push(None);
            }
            Err(reason) => {
                self.event_id.push(letter.properties.message_id.clone());
                self.event_type.push(letter.properties.kind.clone());
                self.trace_id.push(None);
                self.error_kind.push(None);
                self.attempts.push(None);
                self.first_failed_at.push(None);
                self.last_failed_at.push(None);
                self.dead_lettered_at.push(now);
                self.record.push(None);
                self.parse_error.push(Some(reason.clone()));
                self.raw_body.push(Some(letter.body.clone()));
            }
        }
        self.fingerprint.push(letter.fingerprint.clone());
        self.properties
            .push(serde_json::to_value(&letter.properties).unwrap_or(serde_json::Value::Null));
    }
}
