use worker_core::{handler, HandlerError};

#[derive(serde::Deserialize)]
struct OrderPlaced {
    order_id: String,
}

#[handler(event = "OrderPlaced", cap = 100ms)]
async fn charge(event: OrderPlaced) -> Result<(), HandlerError> {
    let _ = event.order_id;
    Ok(())
}

fn main() {}
