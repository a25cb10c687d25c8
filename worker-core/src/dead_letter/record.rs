//! The dead-letter record: the original message, kept losslessly, and why it failed.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::handler::error::ErrorKind;
use crate::message::headers::plain_json;
use crate::message::inbound::Properties;

/// The JSON body of a dead-letter message. Field names are a contract: more may be added, none
/// removed or renamed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterRecord {
    /// The message as the producer sent it.
    pub original_message: OriginalMessage,
    /// What happened to it.
    pub failure_metadata: FailureMetadata,
}

/// How [`OriginalMessage::body`] holds the original bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BodyEncoding {
    /// The body was valid UTF-8 and is stored as that text.
    Utf8,
    /// The body was not UTF-8 and is stored base64-encoded (standard alphabet, padded).
    Base64,
}

/// The original message: readable fields for people, lossless fields for replay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OriginalMessage {
    /// The event id (`message_id`); absent when the producer did not set one.
    pub id: Option<String>,
    /// The event type.
    #[serde(rename = "type")]
    pub kind: String,
    /// The decoded JSON payload; the body as a string when it is UTF-8 but not JSON; `null`
    /// when it is neither. For the exact bytes use `body`.
    pub payload: Value,
    /// The routing key the producer used.
    pub routing_key: String,
    /// The exchange the producer published to.
    pub exchange: String,
    /// The producer's headers, rendered readably (types are in `properties.headers`).
    pub headers: Value,
    /// The exact original body, as `bodyEncoding` says.
    pub body: String,
    /// `utf8` or `base64`.
    pub body_encoding: BodyEncoding,
    /// Every message property the producer set, with typed headers: what a replay republishes.
    pub properties: Properties,
}

impl OriginalMessage {
    /// Builds the readable and lossless views of a message.
    pub fn new(
        id: Option<String>,
        kind: String,
        routing_key: String,
        exchange: String,
        body: &[u8],
        properties: Properties,
    ) -> Self {
        let (text, body_encoding) = match std::str::from_utf8(body) {
            Ok(text) => (text.to_owned(), BodyEncoding::Utf8),
            Err(_) => (BASE64.encode(body), BodyEncoding::Base64),
        };
        let payload = match body_encoding {
            BodyEncoding::Utf8 => {
                serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text.clone()))
            }
            BodyEncoding::Base64 => Value::Null,
        };
        Self {
            id,
            kind,
            payload,
            routing_key,
            exchange,
            headers: plain_json(&properties.headers),
            body: text,
            body_encoding,
            properties,
        }
    }

    /// The original body, byte for byte.
    pub fn original_body(&self) -> Result<Vec<u8>, base64::DecodeError> {
        match self.body_encoding {
            BodyEncoding::Utf8 => Ok(self.body.clone().into_bytes()),
            BodyEncoding::Base64 => BASE64.decode(&self.body),
        }
    }
}

/// Why and when the message failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailureMetadata {
    /// Attempts made, including the last one.
    pub attempts: u32,
    /// When the first attempt failed.
    #[serde(with = "rfc3339")]
    pub first_failed_at: DateTime<Utc>,
    /// When the last attempt failed.
    #[serde(with = "rfc3339")]
    pub last_failed_at: DateTime<Utc>,
    /// The last error, as the handler (or the decoder) reported it.
    pub last_error: String,
    /// `poison` (dead-lettered on the attempt it happened) or `retryable` (attempts exhausted).
    pub error_kind: ErrorKind,
    /// The worker that gave up: `WORKER_CONSUMER`, by default the executable's file name.
    pub consumer: String,
    /// The handler (consumer group).
    pub handler: String,
    /// The trace id every attempt of this event ran under.
    pub trace_id: String,
}

mod rfc3339 {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Millis, true))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

/// Formats a time the way records do (RFC 3339, UTC, milliseconds).
pub fn format_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::headers::HeaderValue;

    fn record(body: &[u8]) -> DeadLetterRecord {
        let mut properties = Properties {
            message_id: Some("evt_1".into()),
            ..Default::default()
        };
        properties
            .headers
            .insert("bin".into(), HeaderValue::LongString(vec![0xc3, 0x28]));
        let now = Utc::now();
        DeadLetterRecord {
            original_message: OriginalMessage::new(
                Some("evt_1".into()),
                "OrderPlaced".into(),
                "OrderPlaced".into(),
                "events".into(),
                body,
                properties,
            ),
            failure_metadata: FailureMetadata {
                attempts: 1,
                first_failed_at: now,
                last_failed_at: now,
                last_error: "boom".into(),
                error_kind: ErrorKind::Poison,
                consumer: "w-0.1.0".into(),
                handler: "h".into(),
                trace_id: "t".into(),
            },
        }
    }

    #[test]
    fn bodies_survive_a_json_round_trip_byte_for_byte() {
        for body in [
            &b"{ \"orderId\" : \"ord_91\",\n \"amount\": 4900.0 }"[..],
            b"not json",
            &[0xff, 0xfe, 0x00, 0x80],
        ] {
            let json = serde_json::to_vec(&record(body)).unwrap();
            let back: DeadLetterRecord = serde_json::from_slice(&json).unwrap();
            assert_eq!(back.original_message.original_body().unwrap(), body);
            assert_eq!(back, record(body).clone_with_times(&back));
        }
    }

    #[test]
    fn contract_field_names() {
        let v = serde_json::to_value(record(br#"{"orderId":"ord_91"}"#)).unwrap();
        assert_eq!(v["originalMessage"]["payload"]["orderId"], "ord_91");
        for field in ["id", "type", "payload", "routingKey", "exchange", "headers"] {
            assert!(v["originalMessage"].get(field).is_some(), "{field}");
        }
        for field in [
            "attempts",
            "firstFailedAt",
            "lastFailedAt",
            "lastError",
            "errorKind",
            "consumer",
            "handler",
            "traceId",
        ] {
            assert!(v["failureMetadata"].get(field).is_some(), "{field}");
        }
        assert_eq!(v["failureMetadata"]["errorKind"], "poison");
        assert_eq!(v["originalMessage"]["headers"]["bin"]["base64"], "wyg=");
    }

    impl DeadLetterRecord {
        /// Copies the (millisecond-truncated) timestamps of `other`, for equality checks.
        fn clone_with_times(mut self, other: &DeadLetterRecord) -> Self {
            self.failure_metadata.first_failed_at = other.failure_metadata.first_failed_at;
            self.failure_metadata.last_failed_at = other.failure_metadata.last_failed_at;
            self
        }
    }
}
