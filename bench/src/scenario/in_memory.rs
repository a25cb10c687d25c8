//! (h) The framework's test harness, in memory: scenario b's no-op handler, no dedup, no broker
//! and no database. Publishes `--messages` events with distinct ids into a
//! [`TestHarness`] and delivers them all with [`TestHarness::run_until_idle`]; the time of both
//! is the figure (events per second through the harness). Building the messages (serializing
//! the JSON) and the harness is not timed, as publishing is not in a-d.

use std::time::Instant;

use worker_core::Handler;
use worker_rabbitmq::testing::{Outcome, TestHarness, TestMessage};

use crate::cli::{Args, Scenario};
use crate::event::{body, event_id, now_us, seq_of, BenchEvent, PUBLISHED_HEADER};
use crate::recorder::{peak_rss_kb, RunReport};
use crate::scenario::framework::noop;
use crate::BoxError;

/// Events per second the harness is to reach with a no-op handler (printed as the target).
pub const TARGET_PER_SECOND: f64 = 50_000.0;

/// Runs scenario h in this process and returns its report. `failures` counts the deliveries
/// that are not [`Outcome::Processed`] by the no-op handler of an event published once; `expected`
/// is `--messages` (no duplicates are published: without dedup they would run again).
pub async fn run(args: &Args) -> Result<RunReport, BoxError> {
    let messages = usize::try_from(args.messages)?;
    let spec = noop.spec();
    // The same events as b publishes: body, message id, content type and publish-time header.
    let batch = (0..args.messages)
        .map(|seq| {
            let event: BenchEvent = serde_json::from_slice(&body(seq, args.payload_bytes))?;
            Ok(TestMessage::json(spec.event_type, event_id(seq), &event)
                .header(PUBLISHED_HEADER, now_us() as i64))
        })
        .collect::<Result<Vec<_>, serde_json::Error>>()?;
    let mut harness = TestHarness::builder().handler(noop).build().await?;
    super::ready();

    let start = Instant::now();
    for message in batch {
        harness.publish(message);
    }
    let published = start.elapsed();
    let deliveries = harness.run_until_idle().await;
    let seconds = start.elapsed().as_secs_f64();

    let mut seen = vec![false; messages];
    let mut failures = 0u64;
    for delivery in deliveries {
        let first = delivery
            .event_id
            .as_deref()
            .and_then(seq_of)
            .filter(|&seq| seq < messages)
            .is_some_and(|seq| !std::mem::replace(&mut seen[seq], true));
        if !(first && delivery.handler == spec.name && delivery.outcome == Outcome::Processed) {
            failures += 1;
            if failures <= 5 {
                eprintln!(
                    "{}: unexpected delivery of {:?} to {}: {}",
                    Scenario::H.title(),
                    delivery.event_id,
                    delivery.handler,
                    delivery.outcome
                );
            }
        }
    }
    let done = deliveries.len() as u64;
    eprintln!(
        "{}: publish {:.3} s + run_until_idle {:.3} s for {done} deliveries, {} still waiting",
        Scenario::H.title(),
        published.as_secs_f64(),
        seconds - published.as_secs_f64(),
        harness.waiting()
    );
    Ok(RunReport {
        scenario: Scenario::H.letter().into(),
        deliveries: done,
        expected: args.messages,
        failures,
        missing_latency: done,
        seconds,
        per_second: if seconds > 0.0 {
            done as f64 / seconds
        } else {
            f64::NAN
        },
        p50_ms: f64::NAN,
        p99_ms: f64::NAN,
        max_ms: f64::NAN,
        peak_rss_kb: peak_rss_kb(),
    })
}
