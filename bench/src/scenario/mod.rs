//! The four consumers, each run in a child process by [`run_child`].

pub mod bare;
pub mod framework;
pub mod handwritten;

use std::sync::Arc;
use std::time::Duration;

use lapin::types::AMQPValue;
use lapin::BasicProperties;

use crate::cli::{Args, Scenario};
use crate::event::PUBLISHED_HEADER;
use crate::namespace::Namespace;
use crate::recorder::Recorder;
use crate::BoxError;

/// Line a child prints once it consumes (the harness starts a `--rate` publisher then).
pub const READY: &str = "ready";
/// Prefix of the child's result line (followed by a [`crate::recorder::RunReport`] as JSON).
pub const RESULT: &str = "result ";

/// Runs `scenario`'s consumer in this process until every expected delivery is done (or the
/// timeout passes), then prints the report.
pub async fn run_child(args: &Args, scenario: Scenario, namespace: String) -> Result<(), BoxError> {
    let namespace = Namespace::named(namespace, args);
    let recorder = Arc::new(Recorder::new(args.deliveries(), args.messages));
    let timeout = Duration::from_secs(args.timeout);
    match scenario {
        Scenario::A => bare::run(args, &namespace, &recorder, timeout).await?,
        Scenario::B | Scenario::D => {
            framework::run(scenario, &namespace, &recorder, timeout).await?
        }
        Scenario::C => handwritten::run(args, &namespace, &recorder, timeout).await?,
    }
    let report = recorder.report(scenario.letter());
    println!("{RESULT}{}", serde_json::to_string(&report)?);
    Ok(())
}

/// Announces that the consumer is running.
pub fn ready() {
    println!("{READY}");
}

/// The publish time carried by a delivery.
pub fn published_us(properties: &BasicProperties) -> Option<u64> {
    let headers = properties.headers().as_ref()?;
    match headers.inner().get(PUBLISHED_HEADER)? {
        AMQPValue::LongLongInt(us) => u64::try_from(*us).ok(),
        _ => None,
    }
}
