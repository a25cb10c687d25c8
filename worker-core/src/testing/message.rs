//! What a test publishes: a message as a producer would send it.

use serde::Serialize;

use crate::message::headers::HeaderValue;
use crate::message::inbound::Properties;
use crate::partition::PARTITION_KEY_HEADER;
use crate::trace_context::TRACEPARENT_HEADER;

/// A message for [`TestHarness::publish`](super::TestHarness::publish): routing key (the event
/// type), body and properties, as a producer publishes them to the events exchange.
///
/// ```
/// use worker_core::testing::TestMessage;
///
/// let good = TestMessage::json("OrderPlaced", "evt_1", &serde_json::json!({"orderId": "o1"}))
///     .header("tenant", "acme");
/// let no_id = TestMessage::raw("OrderPlaced", br#"{"orderId": "o1"}"#.to_vec());
/// let not_json = TestMessage::raw("OrderPlaced", b"hello".to_vec()).id("evt_2");
/// # let _ = (good, no_id, not_json);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct TestMessage {
    pub(crate) routing_key: String,
    pub(crate) body: Vec<u8>,
    pub(crate) properties: Properties,
}

impl TestMessage {
    /// A JSON event as a producer following the message contract sends it: routing key
    /// `event_type`, `message_id` = `event_id`, `content_type` JSON, persistent.
    ///
    /// # Panics
    ///
    /// When `payload` does not serialize to JSON (a map with non-string keys).
    pub fn json(
        event_type: impl Into<String>,
        event_id: impl Into<String>,
        payload: &impl Serialize,
    ) -> Self {
        let body = serde_json::to_vec(payload).expect("the test payload serializes to JSON");
        let mut message = Self::raw(event_type, body).id(event_id);
        message.properties.content_type = Some("application/json".into());
        message
    }

    /// A message with exactly this body and no `message_id`: for bad input (no id, a body that
    /// is not JSON, an oversized payload) or a payload serialized by hand.
    pub fn raw(event_type: impl Into<String>, body: Vec<u8>) -> Self {
        Self {
            routing_key: event_type.into(),
            body,
            properties: Properties {
                delivery_mode: Some(2),
                ..Properties::default()
            },
        }
    }

    /// Sets `message_id`, the event id.
    pub fn id(mut self, event_id: impl Into<String>) -> Self {
        self.properties.message_id = Some(event_id.into());
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<HeaderValue>) -> Self {
        self.properties.headers.insert(name.into(), value.into());
        self
    }

    /// Sets the `x-event-version` header: the version of the event's shape (see
    /// [`Upcasters`](crate::Upcasters)); without it an event is version 1.
    pub fn version(self, version: u32) -> Self {
        self.header(crate::EVENT_VERSION_HEADER, i64::from(version))
    }

    /// Sets the `x-partition-key` header a partitioned handler is routed by (the outbox relay
    /// sets it to the aggregate id).
    pub fn partition_key(self, key: impl Into<String>) -> Self {
        self.header(PARTITION_KEY_HEADER, key.into())
    }

    /// Sets the W3C `traceparent` header: the event belongs to that trace.
    pub fn traceparent(self, traceparent: impl Into<String>) -> Self {
        self.header(TRACEPARENT_HEADER, traceparent.into())
    }

    /// Sets `correlation_id`.
    pub fn correlation_id(mut self, id: impl Into<String>) -> Self {
        self.properties.correlation_id = Some(id.into());
        self
    }

    /// Replaces every property (id, type, headers, ...) with `properties`.
    pub fn properties(mut self, properties: Properties) -> Self {
        self.properties = properties;
        self
    }
}
