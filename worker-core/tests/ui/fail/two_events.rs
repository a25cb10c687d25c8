use worker_core::{handler, HandlerError};

#[derive(serde::Deserialize)]
struct OrderPlaced {
    order_id: String,
}

#[handler(event = "OrderPlaced")]
async fn charge(event: OrderPlaced, amount: i64) -> Result<(), HandlerError> {
    let _ = (event.order_id, amount);
    Ok(())
}

fn main() {}
