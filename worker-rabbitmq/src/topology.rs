//! The exchanges, queues and bindings a worker declares (DESIGN.md §2).
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
//!   `x-delivery-count`; see `docs/decisions.md`).

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};
use worker_core::config::QueueType;
use worker_core::{HandlerSpec, WorkerConfig};

use crate::error::WorkerError;

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
    /// The names for `handler` under `config`'s prefix.
    pub fn new(config: &WorkerConfig, handler: &str) -> Self {
        let work = config.queue_name(handler);
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
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

/// The work queue's arguments: its type and, for quorum queues with a delivery limit, where the
/// broker dead-letters a message redelivered past the limit (a crash loop). At-least-once
/// dead-lettering keeps the message until the delivery-limit queue has it.
pub(crate) fn work_queue_args(config: &WorkerConfig, names: &QueueNames) -> FieldTable {
    let mut args = queue_type_args(config.queue_type);
    if let (QueueType::Quorum, Some(limit)) = (config.queue_type, config.delivery_limit) {
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
pub async fn declare_exchange(channel: &Channel, config: &WorkerConfig) -> Result<(), WorkerError> {
    let options = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .exchange_declare(
            config.exchange.as_str().into(),
            ExchangeKind::Topic,
            options,
            FieldTable::default(),
        )
        .await
        .map_err(WorkerError::broker(format!(
            "declare exchange `{}`",
            config.exchange
        )))
}

/// Declares one handler's work queue, delay queues and dead-letter queue, and binds the work
/// queue. Idempotent: safe on every start and from several workers.
pub async fn declare_handler(
    channel: &Channel,
    config: &WorkerConfig,
    spec: &HandlerSpec,
) -> Result<QueueNames, WorkerError> {
    let names = QueueNames::new(config, spec.name);
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    if config.queue_type == QueueType::Quorum && config.delivery_limit.is_some() {
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
            work_queue_args(config, &names),
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
        crate::partition::declare(channel, config, spec, partitioning, &names).await?;
    } else {
        channel
            .queue_bind(
                names.work.as_str().into(),
                config.exchange.as_str().into(),
                spec.event_type.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(WorkerError::broker(format!(
                "bind `{}` to `{}` with `{}`",
                names.work, config.exchange, spec.event_type
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
        let mut args = queue_type_args(config.queue_type);
        if config.queue_type == QueueType::Quorum {
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
        let config = WorkerConfig {
            queue_prefix: "t1.".into(),
            ..Default::default()
        };
        let names = QueueNames::new(&config, "charge-on-order-placed");
        assert_eq!(names.work, "t1.charge-on-order-placed");
        assert_eq!(names.dlq, "t1.charge-on-order-placed.dlq");
        assert_eq!(names.delay(3), "t1.charge-on-order-placed.retry.3");
    }
}
