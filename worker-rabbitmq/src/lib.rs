//! RabbitMQ transport for `worker-core`: connects, declares the topology, consumes every
//! handler's queue, carries out the pipeline's dispositions with confirmed publishes, and stops
//! gracefully.
//!
//! ```no_run
//! use worker_core::{handler, Context, HandlerError};
//! use worker_rabbitmq::Worker;
//!
//! #[derive(serde::Deserialize)]
//! struct OrderPlaced { order_id: String }
//!
//! #[handler(event = "OrderPlaced")]
//! async fn send_receipt(event: OrderPlaced, ctx: &Context) -> Result<(), HandlerError> {
//!     println!("receipt for {} ({})", event.order_id, ctx.event_id());
//!     Ok(())
//! }
//!
//! #[tokio::main]
//! async fn main() -> std::process::ExitCode {
//!     // `run` parses the command line: `run` (the default), `handlers`, `topology`, `dlq ...`
//!     Worker::builder().handler(send_receipt).run().await
//! }
//! ```

mod ack;
pub mod cli;
mod connection;
mod consume;
mod convert;
mod deaths;
pub mod delay;
pub mod demo;
pub mod dlq;
mod error;
mod lag;
mod ledger;
mod publisher;
pub mod relay;
mod runner;
mod session;
pub mod settings;
mod settle;
mod spans;
pub mod topology;
mod worker;

pub use convert::TooLong;
pub use error::WorkerError;
pub use publisher::{PublishError, Publisher};
pub use relay::{Relay, RelayBuilder, RunningRelay};
pub use settings::{BrokerSettings, Settings};
pub use worker_core::config::ConfigError;
pub use worker::{RunningWorker, Worker, WorkerBuilder};
