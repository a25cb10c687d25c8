//! Crash loops: a message that kills the worker every time it is processed is never settled, so
//! the broker redelivers it until the work queue's delivery limit is exceeded and dead-letters it,
//! raw, to the handler's delivery-limit queue. This step turns such a message into an ordinary
//! dead-letter record (errorKind `poison`) saying why, from what the broker reported about the
//! death (which the transport reads from its own bookkeeping).

use chrono::{DateTime, Utc};

use super::disposition::Disposition;
use super::envelope::Envelope;
use super::{failure, Runtime};
use crate::handler::error::ErrorKind;
use crate::handler::HandlerSpec;
use crate::message::inbound::InboundMessage;

/// What the broker reported about a message it dead-lettered past its delivery limit, in
/// broker-neutral terms. Every field is optional: a broker may not report it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryLimitDeath {
    /// The queue the message died in.
    pub queue: Option<String>,
    /// The exchange the producer had published it to.
    pub exchange: Option<String>,
    /// The routing key the producer had published it with.
    pub routing_key: Option<String>,
    /// How many times it died this way.
    pub count: Option<u64>,
    /// When it died.
    pub time: Option<DateTime<Utc>>,
    /// The broker's reason, as the broker words it (such as `delivery_limit`).
    pub reason: Option<String>,
}

/// The dead-letter disposition for a message the broker dead-lettered after its delivery limit.
///
/// `message` is the delivery without the broker's bookkeeping of the death (the transport removes
/// it: it is not part of what the producer sent); `death` is what that bookkeeping said. The
/// producer's exchange and routing key are restored from `death` when it has them.
pub fn delivery_limit_exceeded(
    spec: &HandlerSpec,
    runtime: &Runtime,
    mut message: InboundMessage,
    death: &DeliveryLimitDeath,
) -> Disposition {
    if let (Some(exchange), Some(routing_key)) = (&death.exchange, &death.routing_key) {
        message.exchange = exchange.clone();
        message.routing_key = routing_key.clone();
    }
    let envelope = Envelope::open(&message, spec.retry.max_attempts);
    failure::dead_letter(
        spec,
        runtime,
        &message,
        &envelope,
        &last_error(death),
        ErrorKind::Poison,
    )
}

/// The record's `lastError`: what happened, and what it means for the worker.
fn last_error(death: &DeliveryLimitDeath) -> String {
    let when = death
        .time
        .map(|t| format!(" at {}", t.to_rfc3339()))
        .unwrap_or_default();
    format!(
        "delivery limit exceeded: the broker dead-lettered this message from queue `{}`{when} after it was delivered \
         more times than the queue's delivery limit without being settled; the worker crashed, was killed or lost its \
         connection while processing it every time (reason={}, count={})",
        death.queue.as_deref().unwrap_or("?"),
        death.reason.as_deref().unwrap_or("?"),
        death.count.map(|c| c.to_string()).unwrap_or_else(|| "?".into()),
    )
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn the_last_error_says_where_when_and_why() {
        let death = DeliveryLimitDeath {
            queue: Some("h".into()),
            reason: Some("delivery_limit".into()),
            count: Some(1),
            time: Utc.timestamp_opt(1_770_000_000, 0).single(),
            ..DeliveryLimitDeath::default()
        };
        assert_eq!(
            last_error(&death),
            "delivery limit exceeded: the broker dead-lettered this message from queue `h` at \
             2026-02-02T02:40:00+00:00 after it was delivered more times than the queue's delivery limit without \
             being settled; the worker crashed, was killed or lost its connection while processing it every time \
             (reason=delivery_limit, count=1)"
        );
        assert!(last_error(&DeliveryLimitDeath::default())
            .contains("from queue `?` after it was delivered"));
        assert!(last_error(&DeliveryLimitDeath::default()).ends_with("(reason=?, count=?)"));
    }

    #[tokio::test]
    async fn the_record_is_poison_with_the_producers_routing() {
        let runtime = Runtime {
            pool: None,
            dedup: crate::dedup::store::DedupStore::new(
                crate::dedup::identifier::Identifier::new("public").expect("identifier"),
            ),
            consumer: "tests".into(),
            observer: std::sync::Arc::new(crate::observer::NoopObserver),
            max_payload_bytes: usize::MAX,
            spans: std::sync::Arc::new(crate::transport::CoreSpans),
            states: crate::transport::pipeline::States::new(),
            clock: crate::transport::pipeline::Clock::system(),
            jitter: crate::transport::pipeline::Jitter::random(),
            max_retry_after: crate::config::DEFAULT_MAX_RETRY_AFTER,
            error_policies: Default::default(),
            upcasters: Default::default(),
        };
        let spec = HandlerSpec::new("h", "OrderPlaced");
        let mut message = InboundMessage {
            exchange: String::new(),
            routing_key: "h.delivery-limit".into(),
            body: br#"{"orderId": "o1"}"#.to_vec(),
            ..InboundMessage::default()
        };
        message.properties.message_id = Some("evt_1".into());
        let death = DeliveryLimitDeath {
            queue: Some("h".into()),
            exchange: Some("events".into()),
            routing_key: Some("OrderPlaced".into()),
            count: Some(1),
            reason: Some("delivery_limit".into()),
            time: None,
        };
        let Disposition::DeadLetter {
            record, message, ..
        } = delivery_limit_exceeded(&spec, &runtime, message, &death)
        else {
            panic!("a delivery-limit death is dead-lettered");
        };
        let meta = &record.failure_metadata;
        assert_eq!(meta.error_kind, ErrorKind::Poison);
        assert_eq!(meta.attempts, 1);
        assert_eq!(meta.last_error, last_error(&death));
        let original = &record.original_message;
        assert_eq!(original.id.as_deref(), Some("evt_1"));
        assert_eq!(
            (original.exchange.as_str(), original.routing_key.as_str()),
            ("events", "OrderPlaced")
        );
        assert_eq!(original.kind, "OrderPlaced");
        assert_eq!(message.properties.message_id.as_deref(), Some("evt_1"));
    }
}
