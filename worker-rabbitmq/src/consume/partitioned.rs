//! Partitioned handlers: a consistent-hash exchange per handler feeds one single-active-consumer
//! queue per partition (declared in [`topology`](crate::topology)), consumed one delivery at a
//! time, with retries held in place so a failing event never lets a later event of its entity
//! overtake it. The handler's plain work queue `h` only receives replays (`dlq replay`), which are
//! forwarded to the hash exchange so they join their entity's partition.
//!
//! The partition routing contract is `docs/contracts.md` §1a; the reasons and trade-offs are in
//! `docs/decisions.md`, "Partitioned handlers".

use std::time::Instant;

use worker_core::transport::message::HeaderValue;
use worker_core::transport::partition::{key_of, next_attempt};
use worker_core::transport::pipeline::{Disposition, OutboundMessage};
use worker_core::transport::retry::{ORIGINAL_EXCHANGE_HEADER, ORIGINAL_ROUTING_KEY_HEADER};
use worker_core::InboundMessage;

use super::Each;
use crate::ack::Acker;
use crate::runner::Runner;
use crate::settle::{self, Settled};

/// Which queue of a partitioned handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Partitioned {
    /// The plain work queue `h`: replays, forwarded to their partition (processed here only
    /// without a valid partition key, which the pipeline dead-letters as poison).
    Replays,
    /// Partition queue `k`: one delivery in flight, retries in place.
    Partition(u16),
}

impl Each for Partitioned {
    async fn process(
        self,
        runner: &Runner,
        message: &InboundMessage,
        acker: &Acker,
        started: Instant,
    ) {
        if self == Partitioned::Replays {
            // Boxed, like the other rare paths below: every delivery in flight would otherwise
            // carry room for their futures.
            let forwarded = Box::pin(forward_replay(runner, acker, message));
            if let Some(settled) = forwarded.await {
                let acked = settled == Settled::Acked;
                runner.settled(message, "forwarded", None, acked, started.elapsed());
                return;
            }
        }
        let decide = || async {
            match self {
                Partitioned::Partition(k) => Box::pin(process_in_place(runner, message, k)).await,
                Partitioned::Replays => runner.verdict(message).await,
            }
        };
        runner
            .decide_and_settle(message, acker, started, decide)
            .await;
    }
}

/// Processes a delivery of a partition queue, holding it through its retries: after a retryable
/// failure the consumer slot (and only this partition) sleeps the §4 backoff and runs the next
/// attempt, so no later event of the entity can overtake it. The attempt count travels in the
/// same headers a broker-side retry copy would carry; the delivery stays unacked throughout, so a
/// crash gives it back to the broker (and to the next active consumer) with its count reset.
async fn process_in_place(
    runner: &Runner,
    message: &InboundMessage,
    partition: u16,
) -> Disposition {
    let restored = restore_producer_routing(message, &runner.names.partition_exchange());
    let message = restored.as_ref().unwrap_or(message);
    let mut attempt = None::<InboundMessage>;
    loop {
        let current = attempt.as_ref().unwrap_or(message);
        let started = Instant::now();
        let disposition = runner.verdict(current).await;
        let Disposition::Retry {
            message: copy,
            delay,
            failures,
            error,
            ..
        } = disposition
        else {
            return disposition;
        };
        runner.settled(message, "retry", None, false, started.elapsed());
        tracing::warn!(
            handler = runner.spec.name,
            event_id = message.properties.message_id,
            partition,
            failures,
            error,
            delay_ms = delay.as_millis() as u64,
            "retryable failure of a partitioned handler: retrying in place; this partition waits"
        );
        tokio::select! {
            biased;
            _ = runner.stop.consuming.cancelled() => {
                return Disposition::GiveBack {
                    reason: "shutdown while a partitioned delivery waited for its next attempt".into(),
                };
            }
            _ = tokio::time::sleep(delay) => {}
        }
        attempt = Some(next_attempt(message, copy));
    }
}

/// The producer's exchange and routing key of a message in the plain work queue `h`: a replay
/// (or a retry copy from before the handler was partitioned) carries them in the worker's
/// headers, anything else was published there by the producer itself.
fn producer_routing(message: &InboundMessage) -> (String, String) {
    let headers = &message.properties.headers;
    let text = |name| headers.get(name).and_then(HeaderValue::as_str);
    match (
        text(ORIGINAL_EXCHANGE_HEADER),
        text(ORIGINAL_ROUTING_KEY_HEADER),
    ) {
        (Some(exchange), Some(routing_key)) => (exchange.to_owned(), routing_key.to_owned()),
        _ => (message.exchange.clone(), message.routing_key.clone()),
    }
}

/// A delivery that the worker forwarded from `h` to the hash exchange (a replay) arrives from
/// that exchange; its producer's routing travels in the worker's headers. Returns the delivery
/// with that routing restored, so its attempts, logs and a new dead-letter record name the
/// exchange and routing key the producer used (and a second replay republishes them), not the
/// internal hash exchange. `None` for every other delivery (the usual case: the producer's own
/// message, whose `exchange` is already the events exchange).
fn restore_producer_routing(
    message: &InboundMessage,
    partition_exchange: &str,
) -> Option<InboundMessage> {
    if message.exchange != partition_exchange {
        return None;
    }
    let headers = &message.properties.headers;
    let text = |name| headers.get(name).and_then(HeaderValue::as_str);
    let exchange = text(ORIGINAL_EXCHANGE_HEADER)?;
    let routing_key = text(ORIGINAL_ROUTING_KEY_HEADER)?;
    Some(InboundMessage {
        exchange: exchange.to_owned(),
        routing_key: routing_key.to_owned(),
        ..message.clone()
    })
}

/// For a message in the plain work queue of a partitioned handler (a replay) that carries a valid
/// partition key: forwards it to the handler's hash exchange, so it is handled in its entity's
/// partition, acks once the broker confirmed the copy (gives it back otherwise) and returns how
/// it was settled. `None` for every other delivery, which the pipeline processes as usual (one
/// without a valid key is dead-lettered there as poison).
async fn forward_replay(
    runner: &Runner,
    acker: &Acker,
    message: &InboundMessage,
) -> Option<Settled> {
    let partitioning = runner.spec.partition.as_ref()?;
    if key_of(partitioning, message).is_err() {
        return None;
    }
    // The copy keeps the producer's routing in the worker's headers (a replay has them already),
    // so the partition consumer can restore it; the hash exchange ignores the routing key.
    let (producer_exchange, producer_routing_key) = producer_routing(message);
    let mut copy = OutboundMessage {
        body: message.body.clone(),
        properties: message.properties.clone(),
    };
    copy.properties.headers.insert(
        ORIGINAL_EXCHANGE_HEADER.into(),
        HeaderValue::string(producer_exchange),
    );
    copy.properties.headers.insert(
        ORIGINAL_ROUTING_KEY_HEADER.into(),
        HeaderValue::string(producer_routing_key.clone()),
    );
    let exchange = runner.names.partition_exchange();
    let published = runner
        .publisher
        .publish(&exchange, &producer_routing_key, &copy)
        .await;
    Some(match published {
        Ok(()) => {
            tracing::info!(
                handler = runner.spec.name,
                event_id = message.properties.message_id,
                exchange,
                "forwarded a message of the work queue to its partition"
            );
            settle::settle(acker, &Disposition::Processed, runner.outlets()).await
        }
        Err(error) => {
            tracing::error!(%error, handler = runner.spec.name, "could not forward a message to its partition; giving it back");
            settle::give_back(acker).await
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forwarded_replay_gets_its_producer_routing_back() {
        let mut forwarded = InboundMessage {
            exchange: "t1.ship.partition".into(),
            routing_key: "OrderPaid".into(),
            ..Default::default()
        };
        let headers = &mut forwarded.properties.headers;
        headers.insert(
            ORIGINAL_EXCHANGE_HEADER.into(),
            HeaderValue::string("events"),
        );
        headers.insert(
            ORIGINAL_ROUTING_KEY_HEADER.into(),
            HeaderValue::string("OrderPaid"),
        );
        let restored = restore_producer_routing(&forwarded, "t1.ship.partition").expect("restored");
        assert_eq!(
            (restored.exchange.as_str(), restored.routing_key.as_str()),
            ("events", "OrderPaid")
        );
        // A producer's own message (exchange = events) is never rewritten, whatever its headers.
        forwarded.exchange = "events".into();
        assert_eq!(
            restore_producer_routing(&forwarded, "t1.ship.partition"),
            None
        );
        // A message published to `h` by hand, without the worker's headers: its own routing.
        let plain = InboundMessage {
            exchange: "events".into(),
            routing_key: "OrderPaid".into(),
            ..Default::default()
        };
        assert_eq!(
            producer_routing(&plain),
            ("events".to_owned(), "OrderPaid".to_owned())
        );
    }
}
