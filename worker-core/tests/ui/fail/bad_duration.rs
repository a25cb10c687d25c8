use worker_core::{handler, HandlerError};

#[derive(serde::Deserialize)]
struct OrderPlaced {
    order_id: String,
}

#[handler(event = "OrderPlaced", base = 2h, cap = "soon", jitter = 1.5s)]
async fn charge(event: OrderPlaced) -> Result<(), HandlerError> {
    let _ = event.order_id;
    Ok(())
}

fn main() {}
