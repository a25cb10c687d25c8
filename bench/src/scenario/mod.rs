//! The five consumers, each run in a child process by [`run_child`].

pub mod bare;
pub mod framework;
pub mod handwritten;
pub mod in_memory;

use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicCancelOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};
use tokio::time::Instant;

use crate::cli::{Args, Scenario};
use crate::event::PUBLISHED_HEADER;
use crate::namespace::Namespace;
use crate::recorder::Recorder;
use crate::BoxError;

/// Line a child prints once it consumes (the harness starts a `--rate` publisher then).
pub const READY: &str = "ready";
/// Prefix of the child's result line (followed by a [`crate::recorder::RunReport`] as JSON).
pub const RESULT: &str = "result ";
/// Longest wait, after the last ack, for the broker to apply a consumer's acks.
const SETTLE_GRACE: Duration = Duration::from_secs(5);
/// How often [`settle_before_close`] asks the broker.
const SETTLE_POLL: Duration = Duration::from_millis(10);

/// Runs `scenario`'s consumer in this process until every expected delivery is done (or the
/// timeout passes), then prints the report. Every scenario but h (in memory) needs the
/// `namespace`.
pub async fn run_child(
    args: &Args,
    scenario: Scenario,
    namespace: Option<String>,
) -> Result<(), BoxError> {
    if !scenario.uses_broker() {
        let report = in_memory::run(args).await?;
        println!("{RESULT}{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    let namespace = Namespace::named(namespace.ok_or("--child needs --namespace")?, args);
    let recorder = Arc::new(Recorder::new(args.deliveries()));
    let timeout = Duration::from_secs(args.timeout);
    match scenario {
        Scenario::A => bare::run(args, &namespace, &recorder, timeout).await?,
        Scenario::B | Scenario::D => {
            framework::run(scenario, &namespace, &recorder, timeout).await?
        }
        Scenario::C => handwritten::run(args, &namespace, &recorder, timeout).await?,
        Scenario::H => unreachable!("h runs in memory, above"),
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

/// Cancels consumer `tag` on `queue` and waits until the broker has applied every ack sent on
/// `channel` before (at most [`SETTLE_GRACE`]); call it after the last ack and before closing
/// the channel. Works around rabbitmq-server#10327: a quorum queue ignores some acks that arrive
/// right before their channel closes and returns those messages to the queue. A quorum queue
/// keeps counting a cancelled consumer until all of its deliveries are settled, so a consumer
/// count of 0 means every ack is in. Runs after the recorder's clock stopped (at the last done
/// delivery), so the wait is not measured.
pub async fn settle_before_close(channel: &Channel, queue: &str, tag: &str) {
    if let Err(error) = channel
        .basic_cancel(tag.into(), BasicCancelOptions::default())
        .await
    {
        eprintln!("cancelling consumer {tag} failed: {error}");
        return;
    }
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let deadline = Instant::now() + SETTLE_GRACE;
    loop {
        match channel
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await
        {
            Ok(state) if state.consumer_count() == 0 => return,
            Ok(_) if Instant::now() < deadline => tokio::time::sleep(SETTLE_POLL).await,
            Ok(state) => {
                eprintln!(
                    "{queue}: {} consumer(s) still hold unsettled deliveries {SETTLE_GRACE:?} after the cancel; closing anyway",
                    state.consumer_count()
                );
                return;
            }
            Err(error) => {
                eprintln!("reading {queue} after the cancel failed: {error}");
                return;
            }
        }
    }
}
