//! The order worker of the story: `charge-on-order-placed` charges each `OrderPlaced` event
//! exactly once, `send-receipt` e-mails a receipt (at least once), and a bad order is
//! dead-lettered with a reason. A charge emits `OrderPaid` through the transactional outbox (the
//! worker runs the relay), and `ship-order` consumes it partitioned by order (one order's events
//! in order, one at a time), skipping stale versions. `ship-order` needs the consistent-hash
//! exchange plugin: `rabbitmq-plugins enable rabbitmq_consistent_hash_exchange`.

pub mod demo;
pub mod events;
pub mod handlers;
pub mod payment;

use worker_rabbitmq::{Worker, WorkerBuilder};

/// The order worker's handlers and migrations, ready to `run()` (the command line: `run`, `dlq ...`, `demo`, ...) (or to configure further in
/// tests).
pub fn worker() -> WorkerBuilder {
    Worker::builder()
        .state(payment::PaymentGateway::from_env())
        .handler(handlers::charge_on_order_placed)
        .handler(handlers::send_receipt)
        .handler(handlers::ship_order)
        .outbox()
        .migrations(sqlx::migrate!())
        .demo(|events| Box::pin(demo::burst(events)))
}
