//! The exchanges, queues and bindings a worker declares (`docs/contracts.md` §2).
//!
//! Per handler `h` (names carry the configured queue prefix):
//! - `h`: the work queue, durable, quorum by default, bound to the events exchange with the
//!   handler's event type;
//! - `h.retry.<level>`: one durable delay queue per backoff level (quorum with at-least-once dead-lettering, or classic). A retry copy waits there
//!   for its per-message TTL (the level's delay plus jitter) and is then dead-lettered by the broker
//!   back to `h` through the default exchange. All copies in one level have a TTL in
//!   `[delay, delay + jitter]`, so FIFO expiry holds a copy back by at most the jitter;
//! - `h.dlq`: the dead-letter queue, classic and durable, holding dead-letter records. Classic
//!   whatever the work queue type: a classic queue returns an unacked message to its original
//!   position and keeps no delivery counter, so the `dlq` commands can read it without reordering
//!   entries or pushing them over a delivery limit (a quorum queue counts every read in
//!   `x-delivery-count`; see `docs/decisions.md`);
//! - `h.delivery-limit` (quorum work queues with a delivery limit): where the broker dead-letters a
//!   message redelivered past the limit; the worker turns each into a record in `h.dlq`.
//!
//! A partitioned handler `h` instead has no delay queues (it retries in place) and:
//! - `h.partition`: an `x-consistent-hash` exchange (plugin `rabbitmq_consistent_hash_exchange`)
//!   hashing the `x-partition-key` header, bound to the events exchange with the event type;
//! - `h.p0` … `h.p<n-1>`: the partition queues (work-queue type and delivery limit, plus
//!   `x-single-active-consumer`), each bound to `h.partition` with weight `1`;
//! - `h`: not bound to the events exchange; it receives replays (`dlq replay`), which the worker
//!   forwards to `h.partition` so they join their entity's partition.
//!
//! The partition routing contract is `docs/contracts.md` §1a; the reasons and trade-offs are in
//! `docs/decisions.md`, "Partitioned handlers".
//! Every name and every declaration of the worker's topology is in this file.

use lapin::options::{
    ExchangeBindOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};
use worker_core::transport::partition::PARTITION_KEY_HEADER;
use worker_core::HandlerSpec;
use worker_core::Partitioning;

use crate::error::WorkerError;
use crate::settings::{BrokerSettings, QueueType};

/// The queue names of one handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueNames {
    /// The work queue.
    pub work: String,
    /// The dead-letter queue.
    pub dlq: String,
    /// Where the broker dead-letters work-queue messages past their delivery limit (raw; the
    /// worker turns each into a dead-letter record in `dlq`).
    pub delivery_limit: String,
    delay_prefix: String,
}

impl QueueNames {
    /// The names for `handler` under the broker settings' prefix.
    pub fn new(broker: &BrokerSettings, handler: &str) -> Self {
        let work = broker.queue_name(handler);
        Self {
            dlq: format!("{work}.dlq"),
            delivery_limit: format!("{work}.delivery-limit"),
            delay_prefix: format!("{work}.retry."),
            work,
        }
    }

    /// The delay queue of `level` (1-based).
    pub fn delay(&self, level: u32) -> String {
        format!("{}{level}", self.delay_prefix)
    }

    /// The consistent-hash exchange of a partitioned handler.
    pub fn partition_exchange(&self) -> String {
        format!("{}.partition", self.work)
    }

    /// Partition queue `k` (0-based) of a partitioned handler.
    pub fn partition(&self, k: u16) -> String {
        format!("{}.p{k}", self.work)
    }
}

/// The exchange type of the consistent-hash plugin.
const PARTITION_EXCHANGE_TYPE: &str = "x-consistent-hash";

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

/// The work queue's arguments: its type and, for quorum queues with a delivery limit, where the
/// broker dead-letters a message redelivered past the limit (a crash loop). At-least-once
/// dead-lettering keeps the message until the delivery-limit queue has it.
fn work_queue_args(broker: &BrokerSettings, names: &QueueNames) -> FieldTable {
    let mut args = queue_type_args(broker.queue_type);
    if let (QueueType::Quorum, Some(limit)) = (broker.queue_type, broker.delivery_limit) {
        args.insert(
            ShortString::from("x-delivery-limit"),
            AMQPValue::LongLongInt(i64::from(limit)),
        );
        args.insert(ShortString::from("x-dead-letter-exchange"), text(""));
        args.insert(
            ShortString::from("x-dead-letter-routing-key"),
            text(&names.delivery_limit),
        );
        args.insert(
            ShortString::from("x-dead-letter-strategy"),
            text("at-least-once"),
        );
        args.insert(ShortString::from("x-overflow"), text("reject-publish"));
    }
    args
}

fn queue_type_args(queue_type: QueueType) -> FieldTable {
    let mut args = FieldTable::default();
    if queue_type == QueueType::Quorum {
        args.insert(
            ShortString::from("x-queue-type"),
            AMQPValue::LongString(LongString::from("quorum")),
        );
    }
    args
}

/// Declares the events exchange.
pub async fn declare_exchange(
    channel: &Channel,
    broker: &BrokerSettings,
) -> Result<(), WorkerError> {
    let options = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .exchange_declare(
            broker.exchange.as_str().into(),
            ExchangeKind::Topic,
            options,
            FieldTable::default(),
        )
        .await
        .map_err(WorkerError::broker(format!(
            "declare exchange `{}`",
            broker.exchange
        )))
}

/// Declares one handler's work queue, delay queues and dead-letter queue, and binds the work
/// queue. Idempotent: safe on every start and from several workers.
pub async fn declare_handler(
    channel: &Channel,
    broker: &BrokerSettings,
    spec: &HandlerSpec,
) -> Result<QueueNames, WorkerError> {
    let names = QueueNames::new(broker, spec.name);
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    if has_delivery_limit_queue(broker) {
        channel
            .queue_declare(
                names.delivery_limit.as_str().into(),
                durable,
                queue_type_args(QueueType::Quorum),
            )
            .await
            .map_err(WorkerError::broker(format!(
                "declare delivery-limit queue `{}`",
                names.delivery_limit
            )))?;
    }
    channel
        .queue_declare(
            names.work.as_str().into(),
            durable,
            work_queue_args(broker, &names),
        )
        .await
        .map_err(WorkerError::broker(format!(
            "declare work queue `{}` (PRECONDITION_FAILED means it exists with other arguments, e.g. from an \
             older version without a delivery limit: drain and delete it, or set WORKER_DELIVERY_LIMIT=off and \
             WORKER_QUEUE_TYPE to match it)",
            names.work
        )))?;
    if let Some(partitioning) = &spec.partition {
        // Partitioned: events reach the partition queues; `h` only takes replays.
        declare_partitions(channel, broker, spec, partitioning, &names).await?;
    } else {
        channel
            .queue_bind(
                names.work.as_str().into(),
                broker.exchange.as_str().into(),
                spec.event_type.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(WorkerError::broker(format!(
                "bind `{}` to `{}` with `{}`",
                names.work, broker.exchange, spec.event_type
            )))?;
    }
    channel
        .queue_declare(
            names.dlq.as_str().into(),
            durable,
            queue_type_args(QueueType::Classic),
        )
        .await
        .map_err(WorkerError::broker(format!(
            "declare dead-letter queue `{}` (classic; if it exists as a quorum queue from an older version, move its records elsewhere and delete it)",
            names.dlq
        )))?;
    for level in 1..=delay_levels(spec) {
        let name = names.delay(level);
        // Quorum delay queues dead-letter at least once (the broker keeps the copy until the work
        // queue has it); classic ones only at most once, which lost copies across broker restarts
        // in the chaos soak.
        let mut args = queue_type_args(broker.queue_type);
        if broker.queue_type == QueueType::Quorum {
            args.insert(
                ShortString::from("x-dead-letter-strategy"),
                text("at-least-once"),
            );
            args.insert(ShortString::from("x-overflow"), text("reject-publish"));
        }
        args.insert(
            ShortString::from("x-dead-letter-exchange"),
            AMQPValue::LongString(LongString::from("")),
        );
        args.insert(
            ShortString::from("x-dead-letter-routing-key"),
            AMQPValue::LongString(LongString::from(names.work.as_str())),
        );
        channel
            .queue_declare(name.as_str().into(), durable, args)
            .await
            .map_err(WorkerError::broker(format!(
                "declare delay queue `{name}` (PRECONDITION_FAILED means it exists with other arguments, e.g. a \
                 classic delay queue from an older version: delete it once it is empty)"
            )))?;
    }
    Ok(names)
}

/// Declares the hash exchange and the partition queues of `spec`, and makes sure the plain work
/// queue `h` is not bound to the events exchange (it only takes replays). Idempotent.
async fn declare_partitions(
    channel: &Channel,
    broker: &BrokerSettings,
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
            broker.exchange.as_str().into(),
            spec.event_type.into(),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(WorkerError::broker(format!(
            "bind `{exchange}` to `{}` with `{}`",
            broker.exchange, spec.event_type
        )))?;
    for k in 0..partitioning.partitions {
        let queue = names.partition(k);
        let mut args = work_queue_args(broker, names);
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
            broker.exchange.as_str().into(),
            spec.event_type.into(),
            FieldTable::default(),
        )
        .await
        .map_err(WorkerError::broker(format!(
            "unbind `{}` from `{}`",
            names.work, broker.exchange
        )))?;
    Ok(())
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

/// Checks that every name of the topology fits an AMQP short string (255 bytes): the exchange and
/// each handler's queues, hash exchange and binding key. lapin panics on a longer one, so a long
/// prefix fails at start, before connecting.
pub(crate) fn check_names(
    broker: &BrokerSettings,
    specs: &[HandlerSpec],
) -> Result<(), WorkerError> {
    let fits = WorkerError::check_name;
    fits("exchange", &broker.exchange)?;
    for spec in specs {
        let names = QueueNames::new(broker, spec.name);
        fits("event type (binding key)", spec.event_type)?;
        fits("work queue", &names.work)?;
        fits("dead-letter queue", &names.dlq)?;
        fits("delivery-limit queue", &names.delivery_limit)?;
        let levels = delay_levels(spec);
        if levels > 0 {
            fits("delay queue", &names.delay(levels))?;
        }
        if let Some(partitioning) = spec.partition {
            fits("partition exchange", &names.partition_exchange())?;
            let last = partitioning.partitions.saturating_sub(1);
            fits("partition queue", &names.partition(last))?;
        }
    }
    Ok(())
}

/// Whether each handler has a delivery-limit queue: only a quorum work queue counts deliveries.
pub(crate) fn has_delivery_limit_queue(broker: &BrokerSettings) -> bool {
    broker.queue_type == QueueType::Quorum && broker.delivery_limit.is_some()
}

/// How many delay queues a handler has: none for a partitioned handler, which retries in place.
pub(crate) fn delay_levels(spec: &HandlerSpec) -> u32 {
    if spec.partition.is_some() {
        0
    } else {
        crate::delay::level_count(&spec.retry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let broker = BrokerSettings {
            queue_prefix: "t1.".into(),
            ..Default::default()
        };
        let names = QueueNames::new(&broker, "charge-on-order-placed");
        assert_eq!(names.work, "t1.charge-on-order-placed");
        assert_eq!(names.dlq, "t1.charge-on-order-placed.dlq");
        assert_eq!(names.delay(3), "t1.charge-on-order-placed.retry.3");
        assert_eq!(
            names.partition_exchange(),
            "t1.charge-on-order-placed.partition"
        );
        assert_eq!(names.partition(7), "t1.charge-on-order-placed.p7");
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
}
