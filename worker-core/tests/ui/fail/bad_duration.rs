use worker_core::{handler, HandlerError};

#[derive(serde::Deserialize)]
struct OrderPlaced {
    order_id: String,
}

#[handler(event = "OrderPlaced", base = 10x, cap = "5 fortnights", jitter = 1.5s)]
async fn charge(event: OrderPlaced) -> Result<(), HandlerError> {
    let _ = event.order_id;
    Ok(())
}

#[handler(event = "OrderPlaced", base = "250 ms", cap = "30m1h", jitter = "soon")]
async fn remind(event: OrderPlaced) -> Result<(), HandlerError> {
    let _ = event.order_id;
    Ok(())
}

fn main() {}
