use worker_core::{handler, HandlerError};

#[derive(serde::Deserialize)]
struct OrderShipped {
    order_id: String,
}

#[handler(event = "OrderShipped", partition_key = "orderId")]
async fn without_count(event: OrderShipped) -> Result<(), HandlerError> {
    let _ = event.order_id;
    Ok(())
}

#[handler(event = "OrderShipped", partition_key = orderId, partitions = 0)]
async fn bad_values(event: OrderShipped) -> Result<(), HandlerError> {
    let _ = event.order_id;
    Ok(())
}

#[handler(event = "OrderShipped", partition_key = "orderId", partitions = 4, concurrency = 2)]
async fn with_concurrency(event: OrderShipped) -> Result<(), HandlerError> {
    let _ = event.order_id;
    Ok(())
}

fn main() {}
