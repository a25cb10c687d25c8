//! Decoding the payload into the handler's event type. A payload that does not decode is poison,
//! with the field path of the problem in `lastError`.

use serde::de::DeserializeOwned;

use crate::message::headers::Headers;
use crate::upcast::{self, Upcasters, VersionError};

/// Why a payload did not decode.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The body is not JSON at all (or not UTF-8).
    #[error("payload of {event_type} is not valid JSON: {source}")]
    NotJson {
        /// The event type.
        event_type: String,
        /// The parser's complaint, with line and column.
        source: serde_json::Error,
    },
    /// The body is JSON but not the shape the handler's type expects.
    #[error("payload of {event_type} does not match the handler's type at `{path}`: {source}")]
    WrongShape {
        /// The event type.
        event_type: String,
        /// Where in the payload: `amount`, `items[2].sku`, or `.` for the root.
        path: String,
        /// What was wrong there.
        source: serde_json::Error,
    },
    /// An older version, upcast, is still not the shape the handler's type expects.
    #[error(
        "payload of {event_type}, upcast from version {from} to {to}, does not match the \
         handler's type at `{path}`: {source}"
    )]
    WrongShapeAfterUpcast {
        /// The event type.
        event_type: String,
        /// The version the event carried.
        from: u32,
        /// The handler's version.
        to: u32,
        /// Where in the upcast payload.
        path: String,
        /// What was wrong there.
        source: serde_json::Error,
    },
    /// The event's version cannot be brought to the handler's.
    #[error(transparent)]
    Version(#[from] VersionError),
}

/// Decodes an event for a handler whose event type is at version `known`: the body as it is when
/// the event declares that version (the usual case, no detour through a JSON tree), else through
/// the registered `upcasters` first. A newer version than `known` is an error.
pub(crate) fn event<T: DeserializeOwned>(
    body: &[u8],
    headers: &Headers,
    event_type: &str,
    known: u32,
    upcasters: &Upcasters,
) -> Result<T, DecodeError> {
    let version = upcast::version_of(headers, event_type)?;
    if version == known {
        return payload(body, event_type);
    }
    if version > known {
        return Err(VersionError::Newer {
            event_type: event_type.to_owned(),
            version,
            known,
        }
        .into());
    }
    let old: serde_json::Value = payload(body, event_type)?;
    let current = upcasters.apply(event_type, version, known, old)?;
    serde_path_to_error::deserialize(current).map_err(|error| DecodeError::WrongShapeAfterUpcast {
        event_type: event_type.to_owned(),
        from: version,
        to: known,
        path: error.path().to_string(),
        source: error.into_inner(),
    })
}

/// Decodes `body` as JSON into `T`. Unknown fields are ignored unless `T` forbids them.
pub fn payload<T: DeserializeOwned>(body: &[u8], event_type: &str) -> Result<T, DecodeError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let event_type = event_type.to_owned();
    match serde_path_to_error::deserialize(&mut deserializer) {
        Ok(value) => match deserializer.end() {
            Ok(()) => Ok(value),
            Err(source) => Err(DecodeError::NotJson { event_type, source }),
        },
        Err(error) => {
            let path = error.path().to_string();
            let source = error.into_inner();
            match source.classify() {
                serde_json::error::Category::Data => Err(DecodeError::WrongShape {
                    event_type,
                    path,
                    source,
                }),
                _ => Err(DecodeError::NotJson { event_type, source }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    #[allow(dead_code)]
    struct OrderPlaced {
        order_id: String,
        amount: i64,
    }

    #[test]
    fn decodes_and_ignores_unknown_fields() {
        let e: OrderPlaced = payload(
            br#"{"orderId":"ord_91","amount":4900,"newField":1}"#,
            "OrderPlaced",
        )
        .unwrap();
        assert_eq!(e.amount, 4900);
    }

    #[test]
    fn reports_the_field_path() {
        let err = payload::<OrderPlaced>(br#"{"orderId":"ord_91","amount":"lots"}"#, "OrderPlaced")
            .unwrap_err();
        assert!(err.to_string().starts_with("payload of OrderPlaced does not match the handler's type at `amount`: invalid type: string \"lots\""), "{err}");
        let err = payload::<OrderPlaced>(br#"{"orderId":"ord_91"}"#, "OrderPlaced").unwrap_err();
        assert!(err.to_string().contains("missing field `amount`"), "{err}");
    }

    #[test]
    fn not_json() {
        for body in [
            &b"hello"[..],
            &[0xff, 0xfe],
            b"",
            b"{\"orderId\":\"a\",\"amount\":1} trailing",
        ] {
            let err = payload::<OrderPlaced>(body, "OrderPlaced").unwrap_err();
            assert!(matches!(err, DecodeError::NotJson { .. }), "{err}");
        }
    }
}
