use sqlx::PgConnection;
use worker_core::{handler, HandlerError};

#[derive(serde::Deserialize)]
struct OrderPlaced {
    order_id: String,
}

#[handler(event = "OrderPlaced", dedup)]
fn charge(event: OrderPlaced, tx: &mut PgConnection) -> Result<(), HandlerError> {
    let _ = (event.order_id, tx);
    Ok(())
}

fn main() {}
