//! What a replay publishes: the original message, as the producer sent it.

use worker_core::transport::message::HeaderValue;
use worker_core::transport::pipeline::OutboundMessage;
use worker_core::transport::retry::{
    ORIGINAL_EXCHANGE_HEADER, ORIGINAL_ROUTING_KEY_HEADER, TRACE_ID_HEADER,
};
use worker_core::transport::trace_context::{parse_traceparent, TRACEPARENT_HEADER};
use worker_core::DeadLetterRecord;

/// The message that replays `record` to its handler's work queue: the original body byte for
/// byte and every original property and header, plus
/// - `x-worker-exchange` / `x-worker-routing-key`: the producer's routing, because the replay
///   travels through the default exchange to the one handler's queue (the other handlers of the
///   event type must not see it again);
/// - `x-worker-trace-id`: the record's trace id, when the original had no usable `traceparent`,
///   so the replayed attempts carry on the same trace.
///
/// No `x-worker-attempts`: the replay starts again at attempt 1 with the full retry budget.
pub fn replay_message(record: &DeadLetterRecord) -> Result<OutboundMessage, base64::DecodeError> {
    let original = &record.original_message;
    let body = original.original_body()?;
    let mut properties = original.properties.clone();
    let headers = &mut properties.headers;
    headers.insert(
        ORIGINAL_EXCHANGE_HEADER.into(),
        HeaderValue::string(original.exchange.clone()),
    );
    headers.insert(
        ORIGINAL_ROUTING_KEY_HEADER.into(),
        HeaderValue::string(original.routing_key.clone()),
    );
    let has_traceparent = headers
        .get(TRACEPARENT_HEADER)
        .and_then(HeaderValue::as_str)
        .and_then(parse_traceparent)
        .is_some();
    if !has_traceparent && !record.failure_metadata.trace_id.is_empty() {
        headers.insert(
            TRACE_ID_HEADER.into(),
            HeaderValue::string(record.failure_metadata.trace_id.clone()),
        );
    }
    Ok(OutboundMessage { body, properties })
}
