//! A standalone outbox relay process for crash tests: configuration from the environment, and
//! with `OUTBOX_CRASH_AFTER_PUBLISH=1` it aborts right after the broker confirmed the first
//! event, before its row is marked published.

use worker_core::RelayObserver;
use worker_rabbitmq::{Relay, Settings};

struct AbortAfterPublish;

impl RelayObserver for AbortAfterPublish {
    fn published(&self, event_id: &str) {
        eprintln!("outbox-relay: {event_id} confirmed by the broker; aborting before the mark");
        std::process::abort();
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let settings = Settings::from_env()?;
    let builder = Relay::builder(settings.worker, settings.broker).settings(settings.outbox);
    let builder = if std::env::var("OUTBOX_CRASH_AFTER_PUBLISH").as_deref() == Ok("1") {
        builder.observer(AbortAfterPublish)
    } else {
        builder
    };
    let relay = builder.start().await?;
    worker_core::transport::shutdown::signal().await;
    relay.shutdown().await;
    Ok(())
}
