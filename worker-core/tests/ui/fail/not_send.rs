use std::rc::Rc;

use worker_core::{handler, HandlerError};

#[derive(serde::Deserialize)]
struct OrderPlaced {
    order_id: String,
}

async fn save(_: &str) {}

#[handler(event = "OrderPlaced")]
async fn charge(event: OrderPlaced) -> Result<(), HandlerError> {
    let id = Rc::new(event.order_id);
    save(&id).await;
    Ok(())
}

fn main() {}
