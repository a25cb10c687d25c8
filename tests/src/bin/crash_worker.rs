//! A worker process for crash tests: runs the scripted handler with configuration from the
//! environment, and with `CRASH_AFTER_COMMIT=1` aborts the process right after the first dedup
//! transaction commits, before the delivery is acked.

use worker_core::Observer;
use worker_rabbitmq::{Settings, Worker};
use worker_tests::handlers::scripted;
use worker_tests::TestEnv;

struct AbortAfterCommit;

impl Observer for AbortAfterCommit {
    fn committed(&self, handler: &str, event_id: &str) {
        eprintln!("crash-worker: {handler} committed {event_id}; aborting before the ack");
        std::process::abort();
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let settings = Settings::from_env()?;
    let builder = Worker::builder()
        .handler(scripted)
        .migrations(TestEnv::migrator())
        .settings(settings);
    let builder = if std::env::var("CRASH_AFTER_COMMIT").as_deref() == Ok("1") {
        builder.observer(AbortAfterCommit)
    } else {
        builder
    };
    builder.serve().await?;
    Ok(())
}
