//! Writing an event to the outbox in the caller's transaction.

use sqlx::PgConnection;

use super::event::OutboxEvent;
use crate::dedup::identifier::Identifier;

/// The outbox table: events written here in a transaction are published by the relay if and only
/// if that transaction commits.
///
/// In a `dedup` handler, write through the handler's transaction, so the event commits with the
/// handler's writes and its dedup row:
///
/// ```no_run
/// use sqlx::PgConnection;
/// use worker_core::{Outbox, OutboxEvent};
/// use worker_core::{handler, Context, HandlerError};
///
/// #[derive(serde::Deserialize)]
/// #[serde(rename_all = "camelCase")]
/// struct OrderPlaced { order_id: String }
///
/// #[handler(event = "OrderPlaced", dedup)]
/// async fn charge(event: OrderPlaced, tx: &mut PgConnection, ctx: &Context) -> Result<(), HandlerError> {
///     // ... the handler's own writes through `tx` ...
///     let paid = serde_json::json!({ "orderId": event.order_id });
///     Outbox::enqueue(tx, OutboxEvent::new("OrderPaid", &event.order_id, paid).caused_by(ctx)).await?;
///     Ok(())
/// }
/// ```
///
/// From any other code (an HTTP handler placing an order), begin a transaction, do the business
/// write, enqueue, commit. [`Outbox::enqueue`] finds the table through the connection's
/// `search_path` (the worker puts `WORKER_DB_SCHEMA` first on its connections);
/// [`Outbox::in_schema`] names the schema explicitly.
#[derive(Debug, Clone)]
pub struct Outbox {
    insert_sql: String,
}

/// Why an event could not be written to the outbox.
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    /// The event id or type cannot be carried by the broker (`message_id` and the routing key
    /// are short strings: 1 to 255 bytes).
    #[error("outbox event {field} {value:?} is invalid: it must be 1 to 255 bytes (it travels as the message id or routing key, which are short strings)")]
    Invalid {
        /// `event_id` or `event_type`.
        field: &'static str,
        /// The value.
        value: String,
    },
    /// The insert failed; the caller's transaction should be rolled back.
    #[error("writing to the outbox failed: {0}")]
    Database(#[from] sqlx::Error),
}

/// What [`Outbox::enqueue`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enqueued {
    /// The row id: the publish order.
    pub id: i64,
    /// The event id the message will carry as `message_id`.
    pub event_id: String,
}

impl Default for Outbox {
    fn default() -> Self {
        Self::with_table("outbox")
    }
}

impl Outbox {
    /// The outbox table of `schema` (`<schema>.outbox`).
    pub fn in_schema(schema: &Identifier) -> Self {
        Self::with_table(&format!("{}.outbox", schema.quoted()))
    }

    fn with_table(table: &str) -> Self {
        Self {
            insert_sql: format!(
                "INSERT INTO {table} (event_id, aggregate_id, event_type, payload, headers)
                 VALUES ($1, $2, $3, $4::jsonb, $5::jsonb) RETURNING id"
            ),
        }
    }

    /// Writes `event` to the outbox table on the connection's `search_path`, in the caller's
    /// transaction, with the current trace context in its headers.
    pub async fn enqueue(
        tx: &mut PgConnection,
        event: OutboxEvent,
    ) -> Result<Enqueued, EnqueueError> {
        Self::default().insert(tx, event).await
    }

    /// Writes `event` to this outbox table, in the caller's transaction.
    pub async fn insert(
        &self,
        tx: &mut PgConnection,
        event: OutboxEvent,
    ) -> Result<Enqueued, EnqueueError> {
        for (field, value) in [
            ("event_id", &event.event_id),
            ("event_type", &event.event_type),
        ] {
            if value.is_empty() || value.len() > 255 {
                return Err(EnqueueError::Invalid {
                    field,
                    value: value.clone(),
                });
            }
        }
        let headers = serde_json::to_string(&event.headers_with_trace())
            .expect("a map of strings always serializes");
        let id: i64 = sqlx::query_scalar(&self.insert_sql)
            .bind(&event.event_id)
            .bind(&event.aggregate_id)
            .bind(&event.event_type)
            .bind(event.payload.to_string())
            .bind(headers)
            .fetch_one(tx)
            .await?;
        Ok(Enqueued {
            id,
            event_id: event.event_id,
        })
    }
}
