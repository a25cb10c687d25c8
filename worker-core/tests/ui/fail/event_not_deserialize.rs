use worker_core::{handler, Context, HandlerError};

#[derive(serde::Deserialize)]
struct OrderPlaced {
    order_id: String,
}

struct OrderRefunded {
    order_id: String,
}

#[handler(event = "OrderRefunded")]
async fn refund(event: OrderRefunded, ctx: &Context) -> Result<(), HandlerError> {
    let _ = (event.order_id, ctx);
    Ok(())
}

fn main() {}
