//! `cargo run -p order-worker`: consumes `OrderPlaced` from the `events` exchange.

#[tokio::main]
async fn main() -> Result<(), worker_rabbitmq::WorkerError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    order_worker::worker().run().await
}
