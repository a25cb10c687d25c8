//! The relay's statements on the outbox table: lock a batch, find what blocks it, mark rows
//! published or failed, prune, count the unpublished rows.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

use crate::dedup::identifier::Identifier;
use crate::message::headers::{HeaderValue, Headers};
use crate::message::inbound::Properties;
use crate::partition::PARTITION_KEY_HEADER;
use crate::pipeline::disposition::OutboundMessage;

/// Header carrying the row's aggregate id on the published message.
pub(crate) const AGGREGATE_ID_HEADER: &str = "x-aggregate-id";

/// One unpublished row, locked by the relay's transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    /// Publish order.
    pub id: i64,
    /// `message_id`.
    pub event_id: String,
    /// Order is kept per aggregate.
    pub aggregate_id: String,
    /// The routing key.
    pub event_type: String,
    /// The JSON body, as text.
    pub payload: String,
    /// The headers, a JSON object as text.
    pub headers: String,
    /// When it was enqueued.
    pub created_at: DateTime<Utc>,
    /// Failed publishes so far.
    pub attempts: i32,
}

impl OutboxRow {
    /// The message to publish: the payload as a persistent JSON body, the event id as
    /// `message_id`, the event type as `type`, the enqueue time as `timestamp`, the stored
    /// headers (trace context) plus [`AGGREGATE_ID_HEADER`] and, unless the event set it itself,
    /// [`PARTITION_KEY_HEADER`] = the aggregate id: the partition routing contract, so a
    /// partitioned consumer receives one aggregate's events in the order the relay publishes them.
    pub fn message(&self) -> OutboundMessage {
        let mut headers = Headers::new();
        if let Ok(serde_json::Value::Object(stored)) = serde_json::from_str(&self.headers) {
            for (name, value) in stored {
                let text = match value {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                headers.insert(name, HeaderValue::string(text));
            }
        }
        headers.insert(
            AGGREGATE_ID_HEADER.into(),
            HeaderValue::string(self.aggregate_id.clone()),
        );
        headers
            .entry(PARTITION_KEY_HEADER.into())
            .or_insert_with(|| HeaderValue::string(self.aggregate_id.clone()));
        OutboundMessage {
            body: self.payload.clone().into_bytes(),
            properties: Properties {
                message_id: Some(self.event_id.clone()),
                kind: Some(self.event_type.clone()),
                content_type: Some("application/json".into()),
                delivery_mode: Some(2),
                timestamp: u64::try_from(self.created_at.timestamp()).ok(),
                headers,
                ..Properties::default()
            },
        }
    }
}

/// The outbox table of one schema, as the relay uses it.
#[derive(Debug, Clone)]
pub struct OutboxTable {
    schema: Identifier,
    claim_sql: String,
    earlier_sql: String,
    published_sql: String,
    failed_sql: String,
    prune_sql: String,
    pending_sql: String,
}

impl OutboxTable {
    /// `<schema>.outbox`.
    pub fn new(schema: Identifier) -> Self {
        let t = format!("{}.outbox", schema.quoted());
        Self {
            // Skips rows another relay holds, and rows queued behind an earlier row of their
            // aggregate that is waiting out a failed publish (they must not overtake it, and
            // must not fill the batch either).
            claim_sql: format!(
                "SELECT o.id, o.event_id, o.aggregate_id, o.event_type, o.payload::text,
                        o.headers::text, o.created_at, o.attempts
                 FROM {t} o
                 WHERE o.published_at IS NULL AND o.next_attempt_at <= now()
                   AND NOT EXISTS (SELECT 1 FROM {t} p
                                   WHERE p.aggregate_id = o.aggregate_id AND p.published_at IS NULL
                                     AND p.id < o.id AND p.next_attempt_at > now())
                 ORDER BY o.id
                 LIMIT $1
                 FOR UPDATE OF o SKIP LOCKED"
            ),
            earlier_sql: format!(
                "SELECT aggregate_id, id FROM {t}
                 WHERE published_at IS NULL AND aggregate_id = ANY($1) AND id < $2"
            ),
            published_sql: format!(
                "UPDATE {t} SET published_at = now(), last_error = NULL WHERE id = ANY($1)"
            ),
            failed_sql: format!(
                "UPDATE {t} SET attempts = attempts + 1, last_error = $2,
                        next_attempt_at = now() + $3::interval
                 WHERE id = $1"
            ),
            prune_sql: format!(
                "DELETE FROM {t} WHERE ctid IN
                   (SELECT ctid FROM {t} WHERE published_at < now() - $1::interval LIMIT 10000)"
            ),
            // Answered from the partial index on the unpublished rows.
            pending_sql: format!("SELECT count(*) FROM {t} WHERE published_at IS NULL"),
            schema,
        }
    }

    /// The schema the table lives in.
    pub fn schema(&self) -> &Identifier {
        &self.schema
    }

    /// Locks up to `limit` unpublished rows that are due, in id order, skipping rows other
    /// relays hold.
    pub async fn claim(
        &self,
        tx: &mut PgConnection,
        limit: u32,
    ) -> Result<Vec<OutboxRow>, sqlx::Error> {
        type Raw = (
            i64,
            String,
            String,
            String,
            String,
            String,
            DateTime<Utc>,
            i32,
        );
        let rows: Vec<Raw> = sqlx::query_as(&self.claim_sql)
            .bind(i64::from(limit))
            .fetch_all(tx)
            .await?;
        Ok(rows
            .into_iter()
            .map(
                |(
                    id,
                    event_id,
                    aggregate_id,
                    event_type,
                    payload,
                    headers,
                    created_at,
                    attempts,
                )| {
                    OutboxRow {
                        id,
                        event_id,
                        aggregate_id,
                        event_type,
                        payload,
                        headers,
                        created_at,
                        attempts,
                    }
                },
            )
            .collect())
    }

    /// The rows of `batch` that may be published now: those with no earlier unpublished row of
    /// their aggregate outside the batch (held by another relay, or not yet due).
    pub async fn publishable(
        &self,
        tx: &mut PgConnection,
        batch: Vec<OutboxRow>,
    ) -> Result<(Vec<OutboxRow>, usize), sqlx::Error> {
        let Some(max_id) = batch.iter().map(|r| r.id).max() else {
            return Ok((batch, 0));
        };
        let mine: HashSet<i64> = batch.iter().map(|r| r.id).collect();
        let aggregates: Vec<String> = batch
            .iter()
            .map(|r| r.aggregate_id.clone())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let earlier: Vec<(String, i64)> = sqlx::query_as(&self.earlier_sql)
            .bind(&aggregates)
            .bind(max_id)
            .fetch_all(tx)
            .await?;
        let mut first_foreign: HashMap<String, i64> = HashMap::new();
        for (aggregate, id) in earlier.into_iter().filter(|(_, id)| !mine.contains(id)) {
            let entry = first_foreign.entry(aggregate).or_insert(id);
            *entry = (*entry).min(id);
        }
        let total = batch.len();
        let ready: Vec<OutboxRow> = batch
            .into_iter()
            .filter(|row| {
                first_foreign
                    .get(&row.aggregate_id)
                    .is_none_or(|foreign| row.id < *foreign)
            })
            .collect();
        let blocked = total - ready.len();
        Ok((ready, blocked))
    }

    /// Marks `ids` published, in the transaction that locked them.
    pub async fn mark_published(
        &self,
        tx: &mut PgConnection,
        ids: &[i64],
    ) -> Result<(), sqlx::Error> {
        if ids.is_empty() {
            return Ok(());
        }
        sqlx::query(&self.published_sql)
            .bind(ids)
            .execute(tx)
            .await
            .map(|_| ())
    }

    /// Records a failed publish of row `id`; it is due again after `backoff`.
    pub async fn mark_failed(
        &self,
        tx: &mut PgConnection,
        id: i64,
        error: &str,
        backoff: Duration,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(&self.failed_sql)
            .bind(id)
            .bind(error)
            .bind(format!("{} milliseconds", backoff.as_millis()))
            .execute(tx)
            .await
            .map(|_| ())
    }

    /// How many rows are not published yet (due or waiting out a backoff).
    pub async fn pending(&self, pool: &PgPool) -> Result<u64, sqlx::Error> {
        let (rows,): (i64,) = sqlx::query_as(&self.pending_sql).fetch_one(pool).await?;
        Ok(u64::try_from(rows).unwrap_or(0))
    }

    /// Deletes up to 10,000 rows published longer than `retention` ago; returns how many.
    pub async fn prune(&self, pool: &PgPool, retention: Duration) -> Result<u64, sqlx::Error> {
        Ok(sqlx::query(&self.prune_sql)
            .bind(format!("{} milliseconds", retention.as_millis()))
            .execute(pool)
            .await?
            .rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_becomes_a_persistent_json_message_with_its_trace_headers() {
        let row = OutboxRow {
            id: 7,
            event_id: "evt_1".into(),
            aggregate_id: "ord_1".into(),
            event_type: "OrderPaid".into(),
            payload: r#"{"orderId": "ord_1"}"#.into(),
            headers:
                r#"{"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}"#
                    .into(),
            created_at: Utc::now(),
            attempts: 0,
        };
        let message = row.message();
        let p = &message.properties;
        assert_eq!(p.message_id.as_deref(), Some("evt_1"));
        assert_eq!(p.kind.as_deref(), Some("OrderPaid"));
        assert_eq!(p.delivery_mode, Some(2));
        assert_eq!(p.content_type.as_deref(), Some("application/json"));
        assert_eq!(
            p.headers["traceparent"].as_str(),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
        assert_eq!(p.headers[AGGREGATE_ID_HEADER].as_str(), Some("ord_1"));
        assert_eq!(p.headers[PARTITION_KEY_HEADER].as_str(), Some("ord_1"));
    }

    #[test]
    fn an_explicit_partition_key_wins_over_the_aggregate_id() {
        let row = OutboxRow {
            id: 8,
            event_id: "evt_2".into(),
            aggregate_id: "ord_1".into(),
            event_type: "LineAdded".into(),
            payload: r#"{"cartId": "cart_9"}"#.into(),
            headers: r#"{"x-partition-key": "cart_9"}"#.into(),
            created_at: Utc::now(),
            attempts: 0,
        };
        let headers = row.message().properties.headers;
        assert_eq!(headers[PARTITION_KEY_HEADER].as_str(), Some("cart_9"));
        assert_eq!(headers[AGGREGATE_ID_HEADER].as_str(), Some("ord_1"));
    }
}
