use worker_core::{handler, HandlerError};

#[derive(serde::Deserialize)]
struct OrderPlaced {
    order_id: String,
}

#[handler(event = "OrderPlaced", dedup)]
async fn charge(event: OrderPlaced, tx: &mut String, ctx: &str) -> Result<(), HandlerError> {
    let _ = (event.order_id, tx, ctx);
    Ok(())
}

fn main() {}
