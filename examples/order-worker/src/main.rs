//! `cargo run -p order-worker`: consumes `OrderPlaced` from the `events` exchange.

#[tokio::main]
async fn main() -> Result<(), worker_rabbitmq::WorkerError> {
    order_worker::worker().run().await
}
