use worker_core::{handler, Context, HandlerError};

#[derive(serde::Deserialize)]
struct OrderPlaced {
    order_id: String,
}

#[handler(event = "OrderPlaced")]
async fn charge(ctx: &Context) -> Result<(), HandlerError> {
    let _ = ctx;
    Ok(())
}

fn main() {}
