//! An event as a producer following the message contract publishes it (`docs/contracts.md` §1):
//! persistent, `message_id` = the event id, the type as routing key, a fresh W3C `traceparent`,
//! published with `mandatory` and confirmed. Used by the demo hook and the `publish` command.

use worker_core::transport::message::{HeaderValue, Headers, Properties};
use worker_core::transport::pipeline::OutboundMessage;
use worker_core::transport::trace_context::{new_trace_id, TRACEPARENT_HEADER};

use crate::publisher::{PublishError, Publisher};

/// Publishes `body` as event `event_id` of type `event_type` to `exchange`, with `headers` (a
/// `traceparent` among them is kept; otherwise the event starts a new trace). Returns the event's
/// trace id once the broker confirmed it, routed to at least one queue.
pub(crate) async fn publish_event(
    publisher: &Publisher,
    exchange: &str,
    event_type: &str,
    event_id: &str,
    body: Vec<u8>,
    mut headers: Headers,
) -> Result<String, PublishError> {
    let trace_id = match headers
        .get(TRACEPARENT_HEADER)
        .and_then(HeaderValue::as_str)
        .and_then(worker_core::transport::trace_context::parse_traceparent)
    {
        Some((trace_id, _)) => trace_id,
        None => {
            let trace_id = new_trace_id();
            let span_id = &new_trace_id()[..16];
            headers.insert(
                TRACEPARENT_HEADER.into(),
                HeaderValue::string(format!("00-{trace_id}-{span_id}-01")),
            );
            trace_id
        }
    };
    let message = OutboundMessage {
        body,
        properties: Properties {
            message_id: Some(event_id.into()),
            content_type: Some("application/json".into()),
            delivery_mode: Some(2),
            timestamp: u64::try_from(chrono::Utc::now().timestamp()).ok(),
            headers,
            ..Default::default()
        },
    };
    publisher.publish(exchange, event_type, &message).await?;
    Ok(trace_id)
}
