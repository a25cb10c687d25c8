//! A standalone outbox relay process for crash tests: configuration from the environment, and
//! with `OUTBOX_CRASH_AFTER_PUBLISH=1` it aborts right after the broker confirmed the first
//! event, before its row is marked published.

use worker_core::outbox::{OutboxSettings, RelayObserver};
use worker_core::WorkerConfig;
use worker_rabbitmq::Relay;

struct AbortAfterPublish;

impl RelayObserver for AbortAfterPublish {
    fn published(&self, event_id: &str) {
        eprintln!("outbox-relay: {event_id} confirmed by the broker; aborting before the mark");
        std::process::abort();
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = WorkerConfig::from_env()?;
    let builder = Relay::builder(config).settings(OutboxSettings::from_env()?);
    let builder = if std::env::var("OUTBOX_CRASH_AFTER_PUBLISH").as_deref() == Ok("1") {
        builder.observer(AbortAfterPublish)
    } else {
        builder
    };
    let relay = builder.start().await?;
    worker_core::shutdown::signal().await;
    relay.shutdown().await;
    Ok(())
}
