//! The order worker's handlers.

use sqlx::PgConnection;
use worker_core::{handler, Context, HandlerError};

use crate::events::OrderPlaced;
use crate::payment;

fn validate(event: &OrderPlaced) -> Result<(), HandlerError> {
    if event.amount <= 0 {
        return Err(HandlerError::poison(format!(
            "InvalidAmount: order {} has amount {}; amounts are positive numbers of cents",
            event.order_id, event.amount
        )));
    }
    Ok(())
}

/// Charges the customer once per event: the charge row, the order update and the dedup row
/// commit together; the event id is the gateway's idempotency key.
#[handler(event = "OrderPlaced", dedup, retry = 12)]
pub async fn charge_on_order_placed(
    event: OrderPlaced,
    tx: &mut PgConnection,
    ctx: &Context,
) -> Result<(), HandlerError> {
    validate(&event)?;
    payment::charge(&event.user_id, event.amount, ctx.event_id(), ctx.attempt()).await?;
    sqlx::query(
        "INSERT INTO charges (event_id, order_id, user_id, amount) VALUES ($1, $2, $3, $4)",
    )
    .bind(ctx.event_id())
    .bind(&event.order_id)
    .bind(&event.user_id)
    .bind(event.amount)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO orders (order_id, user_id, amount, paid, paid_at) VALUES ($1, $2, $3, true, now())
         ON CONFLICT (order_id) DO UPDATE SET paid = true, paid_at = now()",
    )
    .bind(&event.order_id)
    .bind(&event.user_id)
    .bind(event.amount)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Sends the receipt e-mail. No dedup: an e-mail sent twice after a crash is acceptable (the
/// article's trade-off), so this runs once per delivery it receives.
#[handler(event = "OrderPlaced")]
pub async fn send_receipt(event: OrderPlaced, ctx: &Context) -> Result<(), HandlerError> {
    validate(&event)?;
    sqlx::query("INSERT INTO receipts (event_id, order_id, user_id) VALUES ($1, $2, $3)")
        .bind(ctx.event_id())
        .bind(&event.order_id)
        .bind(&event.user_id)
        .execute(ctx.pool())
        .await?;
    tracing::info!(
        order_id = event.order_id,
        user_id = event.user_id,
        "receipt sent"
    );
    Ok(())
}
