use worker_core::handler;

#[derive(serde::Deserialize)]
struct OrderPlaced {
    order_id: String,
}

struct NotAnError;

#[handler(event = "OrderPlaced")]
async fn charge(event: OrderPlaced) -> Result<(), NotAnError> {
    let _ = event.order_id;
    Err(NotAnError)
}

fn main() {}
