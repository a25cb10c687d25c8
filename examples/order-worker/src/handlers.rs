//! The order worker's handlers.

use sqlx::PgConnection;
use worker_rabbitmq::{
    apply_if_newer, handler, Context, Freshness, HandlerError, Outbox, OutboxEvent, State,
};

use crate::events::{OrderPaid, OrderPlaced};
use crate::payment::PaymentGateway;

fn validate(event: &OrderPlaced) -> Result<(), HandlerError> {
    if event.amount <= 0 {
        return Err(HandlerError::poison(format!(
            "InvalidAmount: order {} has amount {}; amounts are positive numbers of cents",
            event.order_id, event.amount
        )));
    }
    Ok(())
}

/// Charges the customer once per event: the charge row, the order update, the `OrderPaid` event
/// in the outbox and the dedup row commit together; the event id is the gateway's idempotency key.
/// The gateway client is application state, built once in `main`'s builder.
#[handler(event = "OrderPlaced", dedup, retry = 12)]
pub async fn charge_on_order_placed(
    event: OrderPlaced,
    tx: &mut PgConnection,
    ctx: &Context,
    State(gateway): State<PaymentGateway>,
) -> Result<(), HandlerError> {
    validate(&event)?;
    gateway
        .charge(&event.user_id, event.amount, ctx.event_id(), ctx.attempt())
        .await?;
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
    let version: i64 = sqlx::query_scalar(
        "UPDATE orders SET version = version + 1 WHERE order_id = $1 RETURNING version",
    )
    .bind(&event.order_id)
    .fetch_one(&mut *tx)
    .await?;
    let paid = OrderPaid {
        order_id: event.order_id.clone(),
        user_id: event.user_id.clone(),
        amount: event.amount,
        version,
    };
    // Published by the outbox relay if and only if this transaction commits.
    let paid = OutboxEvent::new("OrderPaid", &event.order_id, serde_json::to_value(&paid)?);
    Outbox::enqueue(tx, paid.caused_by(ctx)).await?;
    Ok(())
}

/// Prepares the shipment of a paid order. Partitioned by order: the outbox relay stamps each
/// `OrderPaid` with `x-partition-key` = the order id (its aggregate), so one order's events are
/// handled one at a time, in the order they were emitted, across every worker process. And still
/// order-tolerant: an `OrderPaid` older than the version already shipped (a replay of an old
/// dead letter, a producer that skips the outbox) is skipped instead of overwriting newer state.
/// Few attempts and a short cap, because a failing event holds up its partition while it retries
/// in place.
#[handler(
    event = "OrderPaid",
    dedup,
    retry = 5,
    cap = "5s",
    partition_key = "orderId",
    partitions = 4
)]
pub async fn ship_order(
    event: OrderPaid,
    tx: &mut PgConnection,
    ctx: &Context,
) -> Result<(), HandlerError> {
    let freshness = apply_if_newer(tx, ctx.handler(), &event.order_id, event.version).await?;
    if let Freshness::Stale { current } = freshness {
        tracing::info!(
            order_id = event.order_id,
            current,
            stale = event.version,
            "skipping a stale OrderPaid"
        );
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO shipments (order_id, user_id, event_id, version) VALUES ($1, $2, $3, $4)
         ON CONFLICT (order_id) DO UPDATE
             SET user_id = EXCLUDED.user_id, event_id = EXCLUDED.event_id, version = EXCLUDED.version",
    )
    .bind(&event.order_id)
    .bind(&event.user_id)
    .bind(ctx.event_id())
    .bind(event.version)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Sends the receipt e-mail. No dedup: an e-mail sent twice after a crash is acceptable (a
/// side effect outside the database is at least once; see `docs/failure-modes.md`), so this runs
/// once per delivery it receives.
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
