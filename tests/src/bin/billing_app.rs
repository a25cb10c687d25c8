//! One of two applications of the isolation test (`tests/tests/isolation.rs`): a handler named
//! like the shipping app's, on the same event type, with migrations of its own, run with the
//! default settings.

use sqlx::PgConnection;
use worker_rabbitmq::{handler, Context, HandlerError, Worker};

/// Writes an invoice for the order, once per event.
#[handler(event = "OrderPlaced", dedup, retry = 3, name = "on-order-placed")]
async fn invoice(
    _order: serde_json::Value,
    tx: &mut PgConnection,
    ctx: &Context,
) -> Result<(), HandlerError> {
    sqlx::query("INSERT INTO invoices (event_id, schema_name) VALUES ($1, current_schema())")
        .bind(ctx.event_id())
        .execute(tx)
        .await?;
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    Worker::builder()
        .handler(invoice)
        .migrations(sqlx::migrate!("migrations_apps/billing"))
        .run()
        .await
}
