//! Testing handlers without a broker: a [`TestHarness`] runs the worker's own pipeline over
//! in-memory queues and a virtual clock.
//!
//! ```
//! use worker_core::testing::{Outcome, TestHarness, TestMessage};
//! use worker_core::{handler, Context, HandlerError};
//!
//! #[derive(serde::Deserialize)]
//! #[serde(rename_all = "camelCase")]
//! struct OrderPlaced { order_id: String, amount: i64 }
//!
//! #[handler(event = "OrderPlaced", retry = 3)]
//! async fn notify(event: OrderPlaced, _ctx: &Context) -> Result<(), HandlerError> {
//!     if event.amount <= 0 {
//!         return Err(HandlerError::poison(format!("order {} has amount {}", event.order_id, event.amount)));
//!     }
//!     Ok(())
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let mut harness = TestHarness::builder().handler(notify).build().await.unwrap();
//! harness.publish(TestMessage::json("OrderPlaced", "evt_1", &serde_json::json!({"orderId": "o1", "amount": 4900})));
//! harness.publish(TestMessage::json("OrderPlaced", "evt_2", &serde_json::json!({"orderId": "o2", "amount": 0})));
//! harness.run_until_idle().await;
//!
//! assert_eq!(harness.outcomes("notify", "evt_1"), [&Outcome::Processed]);
//! let record = &harness.dead_letters("notify")[0];
//! assert_eq!(record.failure_metadata.last_error, "order o2 has amount 0");
//! # }
//! ```
//!
//! # What it runs for real
//!
//! Each delivery goes through the same code as in a worker
//! ([`ErasedHandler::process`](crate::transport::registry::ErasedHandler::process)): the
//! envelope checks (event id, payload size), decoding with the field path of a mismatch, the
//! partition key check, the dedup claim and the handler in one Postgres transaction (on the pool
//! the test gives, see [`TestHarnessBuilder::pool`]; it works with `#[sqlx::test]`), panics caught
//! as retryable failures, the classification into retry or dead letter, the backoff of the
//! handler's retry policy with the jitter drawn from a seeded generator, the retry headers and
//! the [`DeadLetterRecord`](crate::DeadLetterRecord), stamped with the virtual time. Handlers get their
//! state, checked as at a worker's start. Configuration is a [`WorkerConfig`](crate::WorkerConfig)
//! (default: its defaults, never the environment).
//!
//! # What it models
//!
//! - **Queues and routing**: a published message goes to every handler whose event type is its
//!   routing key. Deliveries are made one at a time, in due order (publish order among messages
//!   due at the same time).
//! - **Retries**: a retry copy comes back after its delay as the next attempt, with the headers
//!   the broker would deliver (the copy of the delay queue, addressed to the handler's queue).
//! - **Partitions**: a partitioned handler's deliveries wait in one lane per partition key; a
//!   failing event retries in place at the head of its lane and later events of the entity wait
//!   behind it (the same rule as the transport's, [`next_attempt`](crate::transport::partition::next_attempt)).
//! - **Give-backs**: a delivery the database cannot take is redelivered ([`Context::redelivered`](crate::Context::redelivered))
//!   after [`GIVE_BACK_PAUSE`], without spending an attempt.
//! - **The outbox**: [`TestHarness::relay_outbox`] publishes what committed handlers enqueued,
//!   as the relay would (same message, same headers).
//!
//! # What it does not model
//!
//! Concurrency (one delivery at a time: no two deliveries race for a dedup row, no batching of
//! dedup deliveries into one transaction), the broker itself (publisher confirms, lost
//! connections, redeliveries after a crash, queue types, delivery limits, the consistent-hash
//! exchange: a lane is one key, where a real partition queue is shared by many keys, so an
//! unrelated key never waits here), the outbox relay's own timing (rows are relayed when the test
//! calls [`TestHarness::relay_outbox`]), and time inside handlers: the virtual clock stamps
//! retry headers and records, while Postgres's `now()` and a handler's own sleeps use real time.

mod harness;
mod message;
mod outcome;
mod schedule;

pub use crate::outbox::table::OutboxRow;
pub use harness::{
    HarnessError, TestHarness, TestHarnessBuilder, DEFAULT_EXCHANGE, DEFAULT_GIVE_BACK_LIMIT,
    GIVE_BACK_PAUSE,
};
pub use message::TestMessage;
pub use outcome::{Delivery, Outcome};
