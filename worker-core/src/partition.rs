//! Partitioned handlers: the events of one entity are handled one at a time, in publish order.
//!
//! A partitioned handler (`#[handler(event = "...", partition_key = "orderId", partitions = 8)]`)
//! gets `partitions` queues instead of one work queue; the broker routes each event to one of them
//! by hashing the `x-partition-key` header the producer sets (the partition routing contract,
//! `docs/contracts.md` §1a), and each queue has one active consumer with one delivery in flight.
//!
//! This module holds what the transport does not need to know about: the declaration and the check
//! that a delivery carries a usable key that matches its payload.

use serde_json::Value;

use crate::message::inbound::InboundMessage;

/// The header a producer sets to the entity's key; the broker hashes it to pick the partition.
pub const PARTITION_KEY_HEADER: &str = "x-partition-key";

/// Most partitions a handler may declare (each is a queue with its own consumer).
pub const MAX_PARTITIONS: u16 = 256;

/// How a partitioned handler's events are spread over its queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partitioning {
    /// The payload's top-level JSON field that identifies the entity (e.g. `orderId`); producers
    /// copy its value into the [`PARTITION_KEY_HEADER`] header.
    pub key: &'static str,
    /// How many partition queues (`<handler>.p0` … `<handler>.p<n-1>`).
    pub partitions: u16,
}

/// Why a delivery of a partitioned handler cannot be ordered; it is dead-lettered as poison.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PartitionError {
    /// The producer did not set the header, so the broker could not route by entity.
    #[error("MissingPartitionKey: the message has no `{PARTITION_KEY_HEADER}` header (a string); a partitioned handler needs it set to the payload's `{field}` so the events of one entity stay in order")]
    Missing {
        /// The payload field the header should copy.
        field: &'static str,
    },
    /// The header is there but not a non-empty UTF-8 string.
    #[error("BadPartitionKey: the `{PARTITION_KEY_HEADER}` header must be a non-empty string (the payload's `{field}`)")]
    NotAString {
        /// The payload field the header should copy.
        field: &'static str,
    },
    /// The header names another entity than the payload: the event went to the wrong partition.
    #[error("PartitionKeyMismatch: header `{PARTITION_KEY_HEADER}` is {header:?} but the payload's `{field}` is {payload}; the event was routed by the wrong key")]
    Mismatch {
        /// The payload field the header should copy.
        field: &'static str,
        /// The header's value.
        header: String,
        /// The payload field's value (JSON), or `missing`.
        payload: String,
    },
}

/// The key of `message`, checked against its payload's `partitioning.key` field: a string field
/// must equal the header, a number must print as it; a missing field is a mismatch.
pub fn key_of(
    partitioning: &Partitioning,
    message: &InboundMessage,
) -> Result<String, PartitionError> {
    let field = partitioning.key;
    let header = message
        .properties
        .headers
        .get(PARTITION_KEY_HEADER)
        .ok_or(PartitionError::Missing { field })?;
    let key = header
        .as_str()
        .filter(|k| !k.is_empty())
        .ok_or(PartitionError::NotAString { field })?;
    let payload = serde_json::from_slice::<Value>(&message.body)
        .ok()
        .and_then(|body| body.get(field).cloned());
    let matches = match &payload {
        Some(Value::String(s)) => s == key,
        Some(Value::Number(n)) => n.to_string() == key,
        _ => false,
    };
    if matches {
        Ok(key.to_owned())
    } else {
        Err(PartitionError::Mismatch {
            field,
            header: key.to_owned(),
            payload: payload.map_or_else(|| "missing".to_owned(), |v| v.to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::headers::HeaderValue;

    fn message(header: Option<HeaderValue>, body: &str) -> InboundMessage {
        let mut m = InboundMessage {
            body: body.as_bytes().to_vec(),
            ..Default::default()
        };
        if let Some(h) = header {
            m.properties.headers.insert(PARTITION_KEY_HEADER.into(), h);
        }
        m
    }

    const P: Partitioning = Partitioning {
        key: "orderId",
        partitions: 4,
    };

    #[test]
    fn checks() {
        let ok = message(Some(HeaderValue::string("o1")), r#"{"orderId":"o1"}"#);
        assert_eq!(key_of(&P, &ok).as_deref(), Ok("o1"));
        let num = message(Some(HeaderValue::string("42")), r#"{"orderId":42}"#);
        assert_eq!(key_of(&P, &num).as_deref(), Ok("42"));
        let missing = message(None, r#"{"orderId":"o1"}"#);
        assert!(matches!(
            key_of(&P, &missing),
            Err(PartitionError::Missing { .. })
        ));
        let int = message(Some(HeaderValue::I32(1)), r#"{"orderId":"o1"}"#);
        assert!(matches!(
            key_of(&P, &int),
            Err(PartitionError::NotAString { .. })
        ));
        let other = message(Some(HeaderValue::string("o2")), r#"{"orderId":"o1"}"#);
        let err = key_of(&P, &other).unwrap_err().to_string();
        assert!(err.contains("\"o2\"") && err.contains("\"o1\""), "{err}");
        let absent = message(Some(HeaderValue::string("o1")), r#"{}"#);
        assert!(key_of(&P, &absent)
            .unwrap_err()
            .to_string()
            .contains("missing"));
    }
}
