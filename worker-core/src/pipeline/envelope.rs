//! Reading a delivery's envelope: event id, event type, where the producer sent it, which
//! attempt this is, and which trace it belongs to (`docs/contracts.md` §1).

use sqlx::PgPool;

use crate::context::Context;
use crate::handler::HandlerSpec;
use crate::message::headers::{HeaderValue, Headers};
use crate::message::inbound::InboundMessage;
use crate::retry::attempts::{
    self, RetryState, ORIGINAL_EXCHANGE_HEADER, ORIGINAL_ROUTING_KEY_HEADER,
};
use crate::trace_context::TraceContext;

/// Longest accepted event id, in bytes (`message_id` is a short string: at most 255 bytes).
pub const MAX_EVENT_ID_BYTES: usize = 255;

/// Why a delivery has no usable event id. The message is dead-lettered as poison.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// No `message_id` property.
    #[error("message has no message_id property: the event id is required (set message_id when publishing)")]
    MissingEventId,
    /// `message_id` is empty (or only whitespace).
    #[error("message_id is empty: the event id is required (set message_id when publishing)")]
    EmptyEventId,
    /// `message_id` is longer than [`MAX_EVENT_ID_BYTES`].
    #[error("message_id is {0} bytes long; the limit is 255")]
    EventIdTooLong(usize),
}

/// The envelope of one delivery.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// The event id, or why there is none.
    pub event_id: Result<String, EnvelopeError>,
    /// The `type` property, else the producer's routing key.
    pub event_type: String,
    /// The exchange the producer published to (retry copies carry it in a header).
    pub exchange: String,
    /// The routing key the producer used (retry copies carry it in a header).
    pub routing_key: String,
    /// Failures before this delivery, from the message's own headers.
    pub(crate) retry: RetryState,
    /// The trace this event belongs to.
    pub(crate) trace: TraceContext,
    /// The headers as the producer sent them.
    pub original_headers: Headers,
    /// The producer's `correlation_id`.
    pub correlation_id: Option<String>,
    /// Whether the broker flagged the delivery as a redelivery.
    pub redelivered: bool,
}

impl Envelope {
    /// Reads the envelope; never fails (problems are kept for the dead-letter record).
    pub fn open(message: &InboundMessage, max_attempts: u32) -> Self {
        let headers = &message.properties.headers;
        let text = |name: &str| {
            headers
                .get(name)
                .and_then(HeaderValue::as_str)
                .map(str::to_owned)
        };
        let retry_copy = attempts::is_retry_copy(headers);
        // A retry copy or a replay arrives through the default exchange, addressed to the work
        // queue; the producer's routing travels in headers. A producer that follows the contract
        // publishes to the events exchange, so these headers are never read from its messages.
        let via_worker = retry_copy || message.exchange.is_empty();
        let (exchange, routing_key) = match (
            via_worker,
            text(ORIGINAL_EXCHANGE_HEADER),
            text(ORIGINAL_ROUTING_KEY_HEADER),
        ) {
            (true, Some(exchange), Some(routing_key)) => (exchange, routing_key),
            _ => (message.exchange.clone(), message.routing_key.clone()),
        };
        let event_type = message
            .properties
            .kind
            .clone()
            .filter(|t| !t.trim().is_empty())
            .unwrap_or_else(|| routing_key.clone());
        Self {
            event_id: event_id(message.properties.message_id.as_deref()),
            event_type,
            exchange,
            routing_key,
            retry: RetryState::read(headers, max_attempts),
            trace: TraceContext::from_headers(headers),
            original_headers: attempts::original_headers(headers),
            correlation_id: message.properties.correlation_id.clone(),
            redelivered: message.redelivered,
        }
    }

    /// The handler's context for this delivery.
    pub fn context(
        &self,
        event_id: String,
        spec: &HandlerSpec,
        pool: Option<PgPool>,
        states: crate::state::States,
    ) -> Context {
        Context {
            event_id,
            event_type: self.event_type.clone(),
            handler: spec.name,
            attempt: self.retry.attempt(),
            max_attempts: spec.retry.max_attempts,
            first_failed_at: self.retry.first_failed_at,
            trace_id: self.trace.trace_id.clone(),
            trace_sampled: self.trace.sampled(),
            correlation_id: self.correlation_id.clone(),
            redelivered: self.redelivered,
            headers: self.original_headers.clone(),
            pool,
            states,
        }
    }
}

fn event_id(raw: Option<&str>) -> Result<String, EnvelopeError> {
    match raw {
        None => Err(EnvelopeError::MissingEventId),
        Some(id) if id.trim().is_empty() => Err(EnvelopeError::EmptyEventId),
        Some(id) if id.len() > MAX_EVENT_ID_BYTES => Err(EnvelopeError::EventIdTooLong(id.len())),
        Some(id) => Ok(id.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retry::attempts::ATTEMPTS_HEADER;

    fn message() -> InboundMessage {
        let mut m = InboundMessage {
            exchange: "events".into(),
            routing_key: "OrderPlaced".into(),
            ..Default::default()
        };
        m.properties.message_id = Some("evt_1".into());
        m
    }

    #[test]
    fn type_defaults_to_routing_key() {
        let e = Envelope::open(&message(), 5);
        assert_eq!(e.event_type, "OrderPlaced");
        assert_eq!(e.event_id.unwrap(), "evt_1");
        let mut m = message();
        m.properties.kind = Some("OrderPlacedV2".into());
        assert_eq!(Envelope::open(&m, 5).event_type, "OrderPlacedV2");
    }

    #[test]
    fn retry_copies_keep_the_producer_routing() {
        let mut m = message();
        m.exchange = String::new();
        m.routing_key = "charge".into();
        let h = &mut m.properties.headers;
        h.insert(ATTEMPTS_HEADER.into(), HeaderValue::I64(2));
        h.insert(
            ORIGINAL_EXCHANGE_HEADER.into(),
            HeaderValue::string("events"),
        );
        h.insert(
            ORIGINAL_ROUTING_KEY_HEADER.into(),
            HeaderValue::string("OrderPlaced"),
        );
        let e = Envelope::open(&m, 5);
        assert_eq!(
            (
                e.exchange.as_str(),
                e.routing_key.as_str(),
                e.retry.attempt()
            ),
            ("events", "OrderPlaced", 3)
        );
        assert!(e.original_headers.is_empty());
    }

    #[test]
    fn replays_keep_the_producer_routing_without_an_attempt_count() {
        let mut m = message();
        m.exchange = String::new();
        m.routing_key = "charge".into();
        let h = &mut m.properties.headers;
        h.insert(
            ORIGINAL_EXCHANGE_HEADER.into(),
            HeaderValue::string("events"),
        );
        h.insert(
            ORIGINAL_ROUTING_KEY_HEADER.into(),
            HeaderValue::string("OrderPlaced"),
        );
        let e = Envelope::open(&m, 5);
        assert_eq!(
            (
                e.event_type.as_str(),
                e.routing_key.as_str(),
                e.retry.attempt()
            ),
            ("OrderPlaced", "OrderPlaced", 1)
        );
    }

    #[test]
    fn event_id_rules() {
        assert_eq!(event_id(None), Err(EnvelopeError::MissingEventId));
        assert_eq!(event_id(Some(" ")), Err(EnvelopeError::EmptyEventId));
        assert_eq!(
            event_id(Some(&"x".repeat(256))),
            Err(EnvelopeError::EventIdTooLong(256))
        );
        assert!(event_id(Some(&"x".repeat(255))).is_ok());
    }
}
