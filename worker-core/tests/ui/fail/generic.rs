use worker_core::{handler, HandlerError};

#[derive(serde::Deserialize)]
struct OrderPlaced {
    order_id: String,
}

#[handler(event = "OrderPlaced")]
async fn charge<E: serde::de::DeserializeOwned>(event: E) -> Result<(), HandlerError> {
    let _ = event;
    Ok(())
}

fn main() {}
