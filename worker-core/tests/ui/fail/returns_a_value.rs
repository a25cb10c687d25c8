use worker_core::{handler, HandlerError};

#[derive(serde::Deserialize)]
struct OrderPlaced {
    order_id: String,
}

#[handler(event = "OrderPlaced")]
async fn charge(event: OrderPlaced) -> Result<String, HandlerError> {
    Ok(event.order_id)
}

fn main() {}
