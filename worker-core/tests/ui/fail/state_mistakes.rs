use worker_core::{handler, HandlerError, State};

#[derive(serde::Deserialize)]
struct OrderPlaced {}

struct NotClone;

#[handler(event = "OrderPlaced")]
async fn not_clone(_event: OrderPlaced, _gateway: State<NotClone>) -> Result<(), HandlerError> {
    Ok(())
}

#[handler(event = "OrderPlaced")]
async fn no_type(_event: OrderPlaced, _gateway: State) -> Result<(), HandlerError> {
    Ok(())
}

fn main() {}
