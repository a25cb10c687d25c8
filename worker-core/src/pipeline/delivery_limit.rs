//! Crash loops: a message that kills the worker every time it is processed is never settled, so
//! the broker redelivers it until its delivery limit (quorum `x-delivery-limit`) is exceeded and
//! dead-letters it, raw, to the handler's delivery-limit queue. This step turns such a message into
//! an ordinary dead-letter record (errorKind `poison`) saying why, with the broker's `x-death` data.

use chrono::{TimeZone, Utc};

use super::disposition::Disposition;
use super::envelope::Envelope;
use super::{failure, Runtime};
use crate::handler::error::ErrorKind;
use crate::handler::HandlerSpec;
use crate::message::headers::{HeaderValue, Headers};
use crate::message::inbound::InboundMessage;
use crate::retry::attempts::BROKER_DEATH_HEADERS;

/// What the broker's `x-death` header says about the delivery-limit death, if anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Death {
    /// The queue the message died in.
    pub queue: Option<String>,
    /// The exchange it had been published to.
    pub exchange: Option<String>,
    /// The routing key it had been published with.
    pub routing_key: Option<String>,
    /// How many times it died this way.
    pub count: Option<i128>,
    /// When (seconds since the epoch).
    pub time: Option<u64>,
    /// The broker's reason (`delivery_limit`).
    pub reason: Option<String>,
}

/// Reads the newest `x-death` entry.
pub fn death(headers: &Headers) -> Death {
    let Some(HeaderValue::Array(entries)) = headers.get("x-death") else {
        return Death::default();
    };
    let Some(HeaderValue::Table(entry)) = entries.first() else {
        return Death::default();
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
        Some(HeaderValue::Timestamp(t)) => Some(*t),
        _ => None,
    };
    Death {
        queue: text("queue"),
        exchange: text("exchange"),
        routing_key,
        count: entry.get("count").and_then(HeaderValue::as_i128),
        time,
        reason: text("reason"),
    }
}

/// The dead-letter disposition for a message the broker dead-lettered after its delivery limit.
pub fn delivery_limit_exceeded(
    spec: &HandlerSpec,
    runtime: &Runtime,
    message: &InboundMessage,
) -> Disposition {
    let death = death(&message.properties.headers);
    let mut original = message.clone();
    original
        .properties
        .headers
        .retain(|name, _| !BROKER_DEATH_HEADERS.contains(&name.as_str()));
    if let (Some(exchange), Some(routing_key)) = (&death.exchange, &death.routing_key) {
        original.exchange = exchange.clone();
        original.routing_key = routing_key.clone();
    }
    let when = death
        .time
        .and_then(|t| Utc.timestamp_opt(i64::try_from(t).ok()?, 0).single())
        .map(|t| format!(" at {}", t.to_rfc3339()))
        .unwrap_or_default();
    let last_error = format!(
        "delivery limit exceeded: the broker dead-lettered this message from queue `{}`{when} after it was delivered \
         more times than the queue's x-delivery-limit without being settled; the worker crashed, was killed or lost its \
         connection while processing it every time (x-death: reason={}, count={})",
        death.queue.as_deref().unwrap_or("?"),
        death.reason.as_deref().unwrap_or("?"),
        death.count.map(|c| c.to_string()).unwrap_or_else(|| "?".into()),
    );
    let envelope = Envelope::open(&original, spec.retry.max_attempts);
    failure::dead_letter(
        spec,
        runtime,
        &original,
        &envelope,
        &last_error,
        ErrorKind::Poison,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_newest_death() {
        let mut entry = Headers::new();
        entry.insert("queue".into(), HeaderValue::string("h"));
        entry.insert("reason".into(), HeaderValue::string("delivery_limit"));
        entry.insert("count".into(), HeaderValue::I64(1));
        entry.insert("exchange".into(), HeaderValue::string("events"));
        entry.insert(
            "routing-keys".into(),
            HeaderValue::Array(vec![HeaderValue::string("OrderPlaced")]),
        );
        entry.insert("time".into(), HeaderValue::Timestamp(1_770_000_000));
        let mut headers = Headers::new();
        headers.insert(
            "x-death".into(),
            HeaderValue::Array(vec![HeaderValue::Table(entry)]),
        );
        let d = death(&headers);
        assert_eq!(d.queue.as_deref(), Some("h"));
        assert_eq!(d.routing_key.as_deref(), Some("OrderPlaced"));
        assert_eq!((d.count, d.time), (Some(1), Some(1_770_000_000)));
        assert_eq!(death(&Headers::new()), Death::default());
    }
}
