//! Partitioned handlers on RabbitMQ: a consistent-hash exchange per handler feeding one
//! single-active-consumer queue per partition, consumed one delivery at a time, with retries held
//! in place so a failing event never lets a later event of its entity overtake it.
//!
//! Per partitioned handler `h` (names carry the queue prefix):
//! - `h.partition`: an `x-consistent-hash` exchange (plugin `rabbitmq_consistent_hash_exchange`)
//!   hashing the `x-partition-key` header, bound to the events exchange with the event type;
//! - `h.p0` … `h.p<n-1>`: the partition queues (work-queue type and delivery limit, plus
//!   `x-single-active-consumer`), each bound to `h.partition` with weight `1`;
//! - `h`: not bound to the events exchange; it receives replays (`dlq replay`), which the worker
//!   forwards to `h.partition` so they join their entity's partition.
//!
//! See `docs/decisions.md`, "Partitioned handlers", for the routing contract and the trade-offs.

use lapin::options::QueueDeclareOptions;
use lapin::options::{ExchangeBindOptions, ExchangeDeclareOptions, QueueBindOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::Acker;
use lapin::{Channel, ExchangeKind};
use tokio_util::sync::CancellationToken;
use worker_core::observer::Settlement;
use worker_core::partition::{key_of, Partitioning, PARTITION_KEY_HEADER};
use worker_core::retry::attempts::{ORIGINAL_EXCHANGE_HEADER, ORIGINAL_ROUTING_KEY_HEADER};
use worker_core::WorkerConfig;
use worker_core::{
    Disposition, HandlerSpec, HeaderValue, InboundMessage, OutboundMessage, Properties,
};

use crate::consumer::{HandlerRunner, Source};
use crate::error::WorkerError;
use crate::settle::{self, Settled};
use crate::topology::{self, QueueNames};

/// The exchange type of the consistent-hash plugin.
const PARTITION_EXCHANGE_TYPE: &str = "x-consistent-hash";

impl QueueNames {
    /// The consistent-hash exchange of a partitioned handler.
    pub fn partition_exchange(&self) -> String {
        format!("{}.partition", self.work)
    }

    /// Partition queue `k` (0-based) of a partitioned handler.
    pub fn partition(&self, k: u16) -> String {
        format!("{}.p{k}", self.work)
    }
}

/// Declares the hash exchange and the partition queues of `spec`, and makes sure the plain work
/// queue `h` is not bound to the events exchange (it only takes replays). Idempotent.
pub(crate) async fn declare(
    channel: &Channel,
    config: &WorkerConfig,
    spec: &HandlerSpec,
    partitioning: &Partitioning,
    names: &QueueNames,
) -> Result<(), WorkerError> {
    let exchange = names.partition_exchange();
    let mut args = FieldTable::default();
    args.insert(ShortString::from("hash-header"), text(PARTITION_KEY_HEADER));
    channel
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Custom(PARTITION_EXCHANGE_TYPE.into()),
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .map_err(|source| declare_error(&exchange, spec.name, source))?;
    channel
        .exchange_bind(
            exchange.as_str().into(),
            config.exchange.as_str().into(),
            spec.event_type.into(),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(WorkerError::broker(format!(
            "bind `{exchange}` to `{}` with `{}`",
            config.exchange, spec.event_type
        )))?;
    for k in 0..partitioning.partitions {
        let queue = names.partition(k);
        let mut args = topology::work_queue_args(config, names);
        args.insert(
            ShortString::from("x-single-active-consumer"),
            AMQPValue::Boolean(true),
        );
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .queue_declare(queue.as_str().into(), durable, args)
            .await
            .map_err(WorkerError::broker(format!(
                "declare partition queue `{queue}`"
            )))?;
        // The routing key of a consistent-hash binding is the queue's weight on the ring.
        channel
            .queue_bind(
                queue.as_str().into(),
                exchange.as_str().into(),
                "1".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(WorkerError::broker(format!(
                "bind `{queue}` to `{exchange}`"
            )))?;
    }
    // A handler that was not partitioned before has its work queue bound to the events exchange;
    // that binding would bypass the partitions. Unbinding a missing binding is a no-op.
    channel
        .queue_unbind(
            names.work.as_str().into(),
            config.exchange.as_str().into(),
            spec.event_type.into(),
            FieldTable::default(),
        )
        .await
        .map_err(WorkerError::broker(format!(
            "unbind `{}` from `{}`",
            names.work, config.exchange
        )))?;
    Ok(())
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

/// Why declaring the hash exchange failed. Without the plugin the broker closes the connection
/// with `COMMAND_INVALID - unknown exchange type 'x-consistent-hash'` (`invalid exchange type`
/// once the plugin was loaded and disabled again): that gets its own error naming the fix.
fn declare_error(exchange: &str, handler: &str, source: lapin::Error) -> WorkerError {
    if source.to_string().contains("exchange type") {
        WorkerError::ConsistentHashPluginMissing {
            exchange: exchange.to_owned(),
            handler: handler.to_owned(),
            source: Box::new(source),
        }
    } else {
        WorkerError::broker(format!("declare consistent-hash exchange `{exchange}`"))(source)
    }
}

/// Processes a delivery of a partition queue, holding it through its retries: after a retryable
/// failure the consumer slot (and only this partition) sleeps the §4 backoff and runs the next
/// attempt, so no later event of the entity can overtake it. The attempt count travels in the
/// same headers a broker-side retry copy would carry; the delivery stays unacked throughout, so a
/// crash gives it back to the broker (and to the next active consumer) with its count reset.
pub(crate) async fn process_in_place(
    runner: &HandlerRunner,
    message: &InboundMessage,
    partition: u16,
    consuming: &CancellationToken,
) -> Disposition {
    let restored = restore_producer_routing(message, &runner.names.partition_exchange());
    let message = restored.as_ref().unwrap_or(message);
    let mut attempt = None::<InboundMessage>;
    loop {
        let current = attempt.as_ref().unwrap_or(message);
        let started = std::time::Instant::now();
        let disposition = runner
            .disposition(current, Source::Partition(partition))
            .await;
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
        runner.runtime.observer.settled(&Settlement {
            handler: runner.spec.name,
            event_id: message.properties.message_id.as_deref(),
            outcome: "retry",
            error_kind: None,
            acked: false,
            duration: started.elapsed(),
        });
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
            _ = consuming.cancelled() => {
                return Disposition::GiveBack {
                    reason: "shutdown while a partitioned delivery waited for its next attempt".into(),
                };
            }
            _ = tokio::time::sleep(delay) => {}
        }
        attempt = Some(next_attempt(message, copy));
    }
}

/// The message the next in-place attempt sees: the delivery as received, with the retry copy's
/// headers (attempt count, first failure, trace) and without the copy's delay TTL.
fn next_attempt(original: &InboundMessage, copy: OutboundMessage) -> InboundMessage {
    InboundMessage {
        exchange: original.exchange.clone(),
        routing_key: original.routing_key.clone(),
        redelivered: original.redelivered,
        body: copy.body,
        properties: Properties {
            expiration: original.properties.expiration.clone(),
            ..copy.properties
        },
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
pub(crate) async fn forward_replay(
    runner: &HandlerRunner,
    acker: &Acker,
    message: &InboundMessage,
    source: Source,
) -> Option<Settled> {
    let partitioning = runner.spec.partition.as_ref()?;
    if source != Source::Work || key_of(partitioning, message).is_err() {
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
            settle::settle(
                acker,
                &Disposition::Processed,
                &runner.names,
                &runner.spec.retry,
                &runner.publisher,
            )
            .await
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
    use worker_core::HeaderValue;

    #[test]
    fn names() {
        let config = WorkerConfig {
            queue_prefix: "t1.".into(),
            ..Default::default()
        };
        let names = QueueNames::new(&config, "ship");
        assert_eq!(names.partition_exchange(), "t1.ship.partition");
        assert_eq!(names.partition(7), "t1.ship.p7");
    }

    #[test]
    fn a_missing_plugin_is_named_with_its_fix() {
        use lapin::protocol::{AMQPError, AMQPErrorKind, AMQPHardError};
        let refused = lapin::Error::from(lapin::ErrorKind::ProtocolError(AMQPError::new(
            AMQPErrorKind::Hard(AMQPHardError::COMMANDINVALID),
            "COMMAND_INVALID - unknown exchange type 'x-consistent-hash'".into(),
        )));
        let error = declare_error("ship-order.partition", "ship-order", refused).to_string();
        assert!(
            error.contains("rabbitmq-plugins enable rabbitmq_consistent_hash_exchange")
                && error.contains("`ship-order`"),
            "{error}"
        );
        let other = declare_error(
            "ship-order.partition",
            "ship-order",
            lapin::Error::from(lapin::ErrorKind::InvalidChannelState(
                lapin::ChannelState::Closed,
                "test",
            )),
        );
        assert!(matches!(other, WorkerError::Broker { .. }), "{other}");
    }

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

    #[test]
    fn next_attempt_keeps_the_delivery_and_takes_the_counts() {
        let mut original = InboundMessage {
            exchange: "events".into(),
            routing_key: "OrderShipped".into(),
            body: b"{}".to_vec(),
            ..Default::default()
        };
        original.properties.message_id = Some("e1".into());
        let mut properties = original.properties.clone();
        properties.expiration = Some("200".into());
        properties
            .headers
            .insert("x-worker-attempts".into(), HeaderValue::I64(1));
        let next = next_attempt(
            &original,
            OutboundMessage {
                body: b"{}".to_vec(),
                properties,
            },
        );
        assert_eq!(next.exchange, "events");
        assert_eq!(next.properties.expiration, None);
        assert_eq!(
            next.properties.headers.get("x-worker-attempts"),
            Some(&HeaderValue::I64(1))
        );
    }
}
