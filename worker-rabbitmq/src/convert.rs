//! Conversions between lapin's AMQP types and `worker-core`'s broker-agnostic ones. Lossless in
//! both directions, so a dead-letter record can be replayed as the producer sent it.

use lapin::message::Delivery;
use lapin::types::{
    AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString, ShortString,
};
use lapin::BasicProperties;
use worker_core::transport::message::{HeaderValue, Headers, Properties};
use worker_core::InboundMessage;

/// A delivery as `worker-core` sees it (its strings and body are moved, not copied).
pub(crate) fn inbound(delivery: Delivery) -> InboundMessage {
    InboundMessage {
        exchange: delivery.exchange.into(),
        routing_key: delivery.routing_key.into(),
        redelivered: delivery.redelivered,
        body: delivery.data,
        properties: properties_from_amqp(&delivery.properties),
    }
}

fn short(s: &Option<ShortString>) -> Option<String> {
    s.as_ref().map(|s| s.to_string())
}

/// AMQP properties to ours.
pub(crate) fn properties_from_amqp(p: &BasicProperties) -> Properties {
    Properties {
        message_id: short(p.message_id()),
        kind: short(p.kind()),
        content_type: short(p.content_type()),
        content_encoding: short(p.content_encoding()),
        correlation_id: short(p.correlation_id()),
        timestamp: *p.timestamp(),
        delivery_mode: *p.delivery_mode(),
        priority: *p.priority(),
        reply_to: short(p.reply_to()),
        expiration: short(p.expiration()),
        user_id: short(p.user_id()),
        app_id: short(p.app_id()),
        headers: p
            .headers()
            .as_ref()
            .map(headers_from_amqp)
            .unwrap_or_default(),
    }
}

/// A string that does not fit the AMQP short string it must travel in (at most 255 bytes).
/// lapin would panic on it, and the broker could not carry it either.
#[derive(Debug, thiserror::Error)]
#[error("{what} is {len} bytes long, but an AMQP short string holds at most 255 bytes")]
pub struct TooLong {
    /// Which property, header or name.
    pub what: String,
    /// Its length in bytes.
    pub len: usize,
}

/// `value` as a short string; `what` names it in the error.
pub(crate) fn short_string(
    value: impl Into<String>,
    what: impl FnOnce() -> String,
) -> Result<ShortString, TooLong> {
    let value = value.into();
    let len = value.len();
    ShortString::try_new(value).map_err(|_| TooLong { what: what(), len })
}

/// Our properties to AMQP. Fails on a property or header that does not fit its AMQP type.
pub(crate) fn properties_to_amqp(p: &Properties) -> Result<BasicProperties, TooLong> {
    let mut out = BasicProperties::default();
    let s = |v: &String, name: &str| short_string(v.as_str(), || format!("the {name} property"));
    if let Some(v) = &p.message_id {
        out = out.with_message_id(s(v, "message_id")?);
    }
    if let Some(v) = &p.kind {
        out = out.with_type(s(v, "type")?);
    }
    if let Some(v) = &p.content_type {
        out = out.with_content_type(s(v, "content_type")?);
    }
    if let Some(v) = &p.content_encoding {
        out = out.with_content_encoding(s(v, "content_encoding")?);
    }
    if let Some(v) = &p.correlation_id {
        out = out.with_correlation_id(s(v, "correlation_id")?);
    }
    if let Some(v) = p.timestamp {
        out = out.with_timestamp(v);
    }
    if let Some(v) = p.delivery_mode {
        out = out.with_delivery_mode(v);
    }
    if let Some(v) = p.priority {
        out = out.with_priority(v);
    }
    if let Some(v) = &p.reply_to {
        out = out.with_reply_to(s(v, "reply_to")?);
    }
    if let Some(v) = &p.expiration {
        out = out.with_expiration(s(v, "expiration")?);
    }
    if let Some(v) = &p.user_id {
        out = out.with_user_id(s(v, "user_id")?);
    }
    if let Some(v) = &p.app_id {
        out = out.with_app_id(s(v, "app_id")?);
    }
    if !p.headers.is_empty() {
        out = out.with_headers(headers_to_amqp(&p.headers)?);
    }
    Ok(out)
}

/// An AMQP field table to our headers.
pub(crate) fn headers_from_amqp(table: &FieldTable) -> Headers {
    table
        .inner()
        .iter()
        .map(|(k, v)| (k.to_string(), value_from_amqp(v)))
        .collect()
}

/// Our headers to an AMQP field table. Fails on a key, or a short-string value, over 255 bytes.
pub(crate) fn headers_to_amqp(headers: &Headers) -> Result<FieldTable, TooLong> {
    let mut table = FieldTable::default();
    for (k, v) in headers {
        let key = short_string(k.as_str(), || format!("the header name {:?}", truncated(k)))?;
        table.insert(key, value_to_amqp(k, v)?);
    }
    Ok(table)
}

/// The start of a name too long to show whole in an error.
fn truncated(name: &str) -> &str {
    let mut end = name.len().min(64);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

fn value_from_amqp(v: &AMQPValue) -> HeaderValue {
    match v {
        AMQPValue::Boolean(b) => HeaderValue::Bool(*b),
        AMQPValue::ShortShortInt(n) => HeaderValue::I8(*n),
        AMQPValue::ShortShortUInt(n) => HeaderValue::U8(*n),
        AMQPValue::ShortInt(n) => HeaderValue::I16(*n),
        AMQPValue::ShortUInt(n) => HeaderValue::U16(*n),
        AMQPValue::LongInt(n) => HeaderValue::I32(*n),
        AMQPValue::LongUInt(n) => HeaderValue::U32(*n),
        AMQPValue::LongLongInt(n) => HeaderValue::I64(*n),
        AMQPValue::Float(n) => HeaderValue::F32(*n),
        AMQPValue::Double(n) => HeaderValue::F64(*n),
        AMQPValue::DecimalValue(d) => HeaderValue::Decimal {
            scale: d.scale,
            value: d.value,
        },
        AMQPValue::ShortString(s) => HeaderValue::ShortString(s.to_string()),
        AMQPValue::LongString(s) => HeaderValue::LongString(s.as_bytes().to_vec()),
        AMQPValue::FieldArray(a) => {
            HeaderValue::Array(a.as_slice().iter().map(value_from_amqp).collect())
        }
        AMQPValue::Timestamp(t) => HeaderValue::Timestamp(*t),
        AMQPValue::FieldTable(t) => HeaderValue::Table(headers_from_amqp(t)),
        AMQPValue::ByteArray(b) => HeaderValue::ByteArray(b.as_slice().to_vec()),
        AMQPValue::Void => HeaderValue::Void,
    }
}

/// `v`, the value of header `key` (or inside it), as an AMQP value.
fn value_to_amqp(key: &str, v: &HeaderValue) -> Result<AMQPValue, TooLong> {
    Ok(match v {
        HeaderValue::Bool(b) => AMQPValue::Boolean(*b),
        HeaderValue::I8(n) => AMQPValue::ShortShortInt(*n),
        HeaderValue::U8(n) => AMQPValue::ShortShortUInt(*n),
        HeaderValue::I16(n) => AMQPValue::ShortInt(*n),
        HeaderValue::U16(n) => AMQPValue::ShortUInt(*n),
        HeaderValue::I32(n) => AMQPValue::LongInt(*n),
        HeaderValue::U32(n) => AMQPValue::LongUInt(*n),
        HeaderValue::I64(n) => AMQPValue::LongLongInt(*n),
        HeaderValue::F32(n) => AMQPValue::Float(*n),
        HeaderValue::F64(n) => AMQPValue::Double(*n),
        HeaderValue::Decimal { scale, value } => AMQPValue::DecimalValue(DecimalValue {
            scale: *scale,
            value: *value,
        }),
        HeaderValue::ShortString(s) => AMQPValue::ShortString(short_string(s.as_str(), || {
            format!("the short-string value of header {:?}", truncated(key))
        })?),
        HeaderValue::LongString(b) => AMQPValue::LongString(LongString::from(b.clone())),
        HeaderValue::Array(items) => AMQPValue::FieldArray(FieldArray::from(
            items
                .iter()
                .map(|item| value_to_amqp(key, item))
                .collect::<Result<Vec<_>, _>>()?,
        )),
        HeaderValue::Timestamp(t) => AMQPValue::Timestamp(*t),
        HeaderValue::Table(t) => AMQPValue::FieldTable(headers_to_amqp(t)?),
        HeaderValue::ByteArray(b) => AMQPValue::ByteArray(ByteArray::from(b.clone())),
        HeaderValue::Void => AMQPValue::Void,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_through_amqp_types() {
        let mut nested = Headers::new();
        nested.insert("x".into(), HeaderValue::U16(7));
        let mut h = Headers::new();
        for (i, v) in [
            HeaderValue::Bool(false),
            HeaderValue::I8(-1),
            HeaderValue::U8(1),
            HeaderValue::I16(-2),
            HeaderValue::U16(2),
            HeaderValue::I32(-3),
            HeaderValue::U32(3),
            HeaderValue::I64(-4),
            HeaderValue::F32(0.5),
            HeaderValue::F64(0.25),
            HeaderValue::Decimal {
                scale: 2,
                value: 4900,
            },
            HeaderValue::ShortString("s".into()),
            HeaderValue::LongString(vec![0xff, 0x00]),
            HeaderValue::Array(vec![HeaderValue::Void]),
            HeaderValue::Timestamp(5),
            HeaderValue::Table(nested),
            HeaderValue::ByteArray(vec![9]),
            HeaderValue::Void,
        ]
        .into_iter()
        .enumerate()
        {
            h.insert(format!("k{i}"), v);
        }
        assert_eq!(headers_from_amqp(&headers_to_amqp(&h).expect("fits")), h);
        let p = Properties {
            message_id: Some("m".into()),
            timestamp: Some(9),
            headers: h,
            ..Default::default()
        };
        assert_eq!(
            properties_from_amqp(&properties_to_amqp(&p).expect("fits")),
            p
        );
    }

    #[test]
    fn a_short_string_over_255_bytes_is_an_error_not_a_panic() {
        let fits = "x".repeat(255);
        let long = "x".repeat(256);
        let p = Properties {
            message_id: Some(fits.clone()),
            ..Default::default()
        };
        assert!(properties_to_amqp(&p).is_ok());
        let p = Properties {
            correlation_id: Some(long.clone()),
            ..Default::default()
        };
        let error = properties_to_amqp(&p).expect_err("too long");
        assert_eq!(error.len, 256);
        assert!(error.what.contains("correlation_id"), "{error}");

        let mut nested = Headers::new();
        nested.insert("inner".into(), HeaderValue::ShortString(long.clone()));
        let mut h = Headers::new();
        h.insert("outer".into(), HeaderValue::Table(nested));
        let error = headers_to_amqp(&h).expect_err("too long");
        assert!(error.what.contains("inner"), "{error}");

        let mut h = Headers::new();
        h.insert(long.clone(), HeaderValue::Void);
        assert!(headers_to_amqp(&h).is_err());
        // A long string is not a short string: any length goes.
        let mut h = Headers::new();
        h.insert(fits, HeaderValue::LongString(long.into_bytes()));
        assert!(headers_to_amqp(&h).is_ok());
    }
}
