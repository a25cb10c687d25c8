//! RabbitMQ's bookkeeping of dead-lettered messages (`x-death` and the `x-first-death-*` /
//! `x-last-death-*` headers), which the core never sees:
//!
//! - a retry copy that comes back from a delay queue carries the broker's record of its expiry;
//!   that is not what the producer sent, so it is removed before the core reads the delivery (the
//!   worker's attempt count travels in its own headers, `docs/contracts.md` §3);
//! - a message the work queue dead-lettered past its delivery limit carries the broker's record of
//!   why; it is read into a [`DeliveryLimitDeath`] for the dead-letter record, then removed.
//!
//! A producer's own `x-death` on a first delivery (not a retry copy) is the producer's header and
//! is kept, as every other header is.

use chrono::{TimeZone, Utc};
use worker_core::transport::message::{HeaderValue, Headers};
use worker_core::transport::pipeline::Disposition;
use worker_core::transport::pipeline::Runtime;
use worker_core::transport::retry::is_retry_copy;
use worker_core::transport::{delivery_limit_exceeded, DeliveryLimitDeath};
use worker_core::{HandlerSpec, InboundMessage};

/// Headers RabbitMQ adds when it dead-letters a message (on expiry in a delay queue, or past the
/// work queue's `x-delivery-limit`).
const DEATH_HEADERS: [&str; 7] = [
    "x-death",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-last-death-exchange",
    "x-last-death-queue",
    "x-last-death-reason",
];

/// Removes the delay queue's death headers from a retry copy; leaves any other delivery as it
/// is. For deliveries of the work and partition queues (not of the delivery-limit queue, whose
/// death headers [`delivery_limit_disposition`] reads).
pub(crate) fn forget_delay(message: &mut InboundMessage) {
    let headers = &mut message.properties.headers;
    if is_retry_copy(headers) {
        remove_death_headers(headers);
    }
}

fn remove_death_headers(headers: &mut Headers) {
    for name in DEATH_HEADERS {
        headers.remove(name);
    }
}

/// The dead-letter disposition of a delivery from the delivery-limit queue: the newest `x-death`
/// entry says why it died, and the record's original message keeps none of the death headers.
pub(crate) fn delivery_limit_disposition(
    spec: &HandlerSpec,
    runtime: &Runtime,
    message: &InboundMessage,
) -> Disposition {
    let death = newest_death(&message.properties.headers);
    let mut original = message.clone();
    remove_death_headers(&mut original.properties.headers);
    delivery_limit_exceeded(spec, runtime, original, &death)
}

/// Reads the newest `x-death` entry (RabbitMQ keeps the most recent death first).
fn newest_death(headers: &Headers) -> DeliveryLimitDeath {
    let Some(HeaderValue::Array(entries)) = headers.get("x-death") else {
        return DeliveryLimitDeath::default();
    };
    let Some(HeaderValue::Table(entry)) = entries.first() else {
        return DeliveryLimitDeath::default();
    };
    let text = |key: &str| {
        entry
            .get(key)
            .and_then(HeaderValue::as_str)
            .map(str::to_owned)
    };
    let routing_key = match entry.get("routing-keys") {
        Some(HeaderValue::Array(keys)) => keys
            .first()
            .and_then(HeaderValue::as_str)
            .map(str::to_owned),
        _ => None,
    };
    let time = match entry.get("time") {
        Some(HeaderValue::Timestamp(t)) => i64::try_from(*t)
            .ok()
            .and_then(|t| Utc.timestamp_opt(t, 0).single()),
        _ => None,
    };
    DeliveryLimitDeath {
        queue: text("queue"),
        exchange: text("exchange"),
        routing_key,
        count: entry
            .get("count")
            .and_then(HeaderValue::as_i128)
            .and_then(|c| u64::try_from(c).ok()),
        time,
        reason: text("reason"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use worker_core::transport::retry::ATTEMPTS_HEADER;

    fn death_entry(queue: &str, reason: &str) -> HeaderValue {
        let mut entry = Headers::new();
        entry.insert("queue".into(), HeaderValue::string(queue));
        entry.insert("reason".into(), HeaderValue::string(reason));
        entry.insert("count".into(), HeaderValue::I64(1));
        entry.insert("exchange".into(), HeaderValue::string("events"));
        entry.insert(
            "routing-keys".into(),
            HeaderValue::Array(vec![HeaderValue::string("OrderPlaced")]),
        );
        entry.insert("time".into(), HeaderValue::Timestamp(1_770_000_000));
        HeaderValue::Table(entry)
    }

    #[test]
    fn reads_the_newest_death() {
        let mut headers = Headers::new();
        headers.insert(
            "x-death".into(),
            HeaderValue::Array(vec![
                death_entry("h", "delivery_limit"),
                death_entry("h.retry.1", "expired"),
            ]),
        );
        let d = newest_death(&headers);
        assert_eq!(d.queue.as_deref(), Some("h"));
        assert_eq!(d.reason.as_deref(), Some("delivery_limit"));
        assert_eq!(d.exchange.as_deref(), Some("events"));
        assert_eq!(d.routing_key.as_deref(), Some("OrderPlaced"));
        assert_eq!(d.count, Some(1));
        assert_eq!(d.time.map(|t| t.timestamp()), Some(1_770_000_000));
        assert_eq!(newest_death(&Headers::new()), DeliveryLimitDeath::default());
    }

    #[test]
    fn a_retry_copy_loses_what_the_delay_queue_added() {
        let mut message = InboundMessage::default();
        let headers = &mut message.properties.headers;
        headers.insert(ATTEMPTS_HEADER.into(), HeaderValue::I64(1));
        headers.insert(
            "x-death".into(),
            HeaderValue::Array(vec![death_entry("h.retry.1", "expired")]),
        );
        for name in &DEATH_HEADERS[1..] {
            headers.insert((*name).into(), HeaderValue::string("h.retry.1"));
        }
        headers.insert("tenant".into(), HeaderValue::string("acme"));
        forget_delay(&mut message);
        assert_eq!(
            message.properties.headers.keys().collect::<Vec<_>>(),
            vec!["tenant", ATTEMPTS_HEADER]
        );
    }

    #[tokio::test]
    async fn a_delivery_limit_record_says_why_and_keeps_no_death_headers() {
        let runtime = Runtime {
            pool: None,
            dedup: worker_core::transport::dedup::DedupStore::new(
                worker_core::transport::dedup::Identifier::new("public").expect("identifier"),
            ),
            consumer: "tests".into(),
            observer: std::sync::Arc::new(worker_core::transport::observer::NoopObserver),
            max_payload_bytes: usize::MAX,
            spans: std::sync::Arc::new(crate::spans::RabbitSpans),
            states: worker_core::transport::pipeline::States::new(),
            clock: worker_core::transport::pipeline::Clock::system(),
            jitter: worker_core::transport::pipeline::Jitter::random(),
            max_retry_after: worker_core::transport::config::DEFAULT_MAX_RETRY_AFTER,
            error_policies: Default::default(),
            upcasters: Default::default(),
        };
        let mut message = InboundMessage {
            routing_key: "h.delivery-limit".into(),
            body: b"{}".to_vec(),
            ..InboundMessage::default()
        };
        message.properties.message_id = Some("evt_1".into());
        let headers = &mut message.properties.headers;
        headers.insert(
            "x-death".into(),
            HeaderValue::Array(vec![death_entry("h", "delivery_limit")]),
        );
        headers.insert(
            "x-last-death-reason".into(),
            HeaderValue::string("delivery_limit"),
        );
        headers.insert("tenant".into(), HeaderValue::string("acme"));
        let spec = HandlerSpec::new("h", "OrderPlaced");
        let Disposition::DeadLetter { record, .. } =
            delivery_limit_disposition(&spec, &runtime, &message)
        else {
            panic!("dead-lettered");
        };
        let meta = &record.failure_metadata;
        assert!(
            meta.last_error.contains("from queue `h` at 2026-"),
            "{}",
            meta.last_error
        );
        assert!(
            meta.last_error.contains("reason=delivery_limit, count=1"),
            "{}",
            meta.last_error
        );
        let original = &record.original_message;
        assert_eq!(
            (original.exchange.as_str(), original.routing_key.as_str()),
            ("events", "OrderPlaced")
        );
        assert_eq!(
            original.properties.headers.keys().collect::<Vec<_>>(),
            vec!["tenant"]
        );
    }

    #[test]
    fn a_producers_own_x_death_is_kept() {
        let mut message = InboundMessage::default();
        message
            .properties
            .headers
            .insert("x-death".into(), HeaderValue::Array(vec![]));
        forget_delay(&mut message);
        assert!(
            message.properties.headers.contains_key("x-death"),
            "a producer's own x-death is kept"
        );
    }
}
