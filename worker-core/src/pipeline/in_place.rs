//! Retrying in place: a partitioned handler's failing event is tried again at the head of its
//! partition, so no later event of its entity overtakes it.

use super::disposition::OutboundMessage;
use crate::message::inbound::{InboundMessage, Properties};

/// The message the next attempt of a partitioned handler sees after a retryable failure: the
/// delivery as received, with the retry copy's headers (attempt count, first failure, trace) and
/// without the copy's delay TTL. A partitioned handler retries in place, at the head of its
/// partition, so no later event of its entity overtakes it; this is the one rule for what that
/// next attempt looks like, used by the transport and by the test harness.
pub fn next_attempt(original: &InboundMessage, copy: OutboundMessage) -> InboundMessage {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::headers::HeaderValue;

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
