use sqlx::PgConnection;
use worker_core::Partitioning;
use worker_core::{handler, Context, Handler, HandlerError};

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct OrderShipped {
    order_id: String,
}

/// Records each shipment of an order in sequence: one order's events one at a time, in order.
#[handler(event = "OrderShipped", dedup, partition_key = "orderId", partitions = 8)]
async fn record_shipment(
    event: OrderShipped,
    tx: &mut PgConnection,
    ctx: &Context,
) -> Result<(), HandlerError> {
    sqlx::query("INSERT INTO shipments (order_id, event_id) VALUES ($1, $2)")
        .bind(&event.order_id)
        .bind(ctx.event_id())
        .execute(&mut *tx)
        .await?;
    Ok(())
}

fn main() {
    let spec = record_shipment.spec();
    assert_eq!(
        spec.partition,
        Some(Partitioning {
            key: "orderId",
            partitions: 8
        })
    );
    assert_eq!(spec.concurrency, 8);
}
