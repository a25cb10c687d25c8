use worker_core::{handler, Context, HandlerError};

#[derive(serde::Deserialize)]
struct OrderPlaced {
    order_id: String,
}

#[handler(retry = 3)]
async fn charge(event: OrderPlaced, ctx: &Context) -> Result<(), HandlerError> {
    let _ = (event.order_id, ctx);
    Ok(())
}

fn main() {}
