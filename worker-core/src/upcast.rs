//! Versioned events: a producer stamps the version of an event's shape in the
//! [`EVENT_VERSION_HEADER`] (`x-event-version`, missing means 1); a handler declares the version
//! its event type is (`#[handler(..., version = 3)]`), and [`Upcasters`] registered for the event
//! type turn an older JSON shape into the current one before decoding, one step at a time
//! (v1 → v2 → v3). A version newer than the handler knows is poison with a reason that says so:
//! replay the dead letter once a consumer that knows the version is deployed.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde_json::Value;

use crate::message::headers::{HeaderValue, Headers};

/// The header that carries the version of an event's shape: a positive integer (an integer
/// type, or a string of digits). Missing means version 1.
pub const EVENT_VERSION_HEADER: &str = "x-event-version";

/// The version of a message that does not say.
pub(crate) const FIRST_VERSION: u32 = 1;

/// Why an event's version could not be brought to the handler's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    /// The header is there but is not a positive integer.
    #[error("{EVENT_VERSION_HEADER} of {event_type} is {value}, not a positive integer version")]
    Invalid {
        /// The event type.
        event_type: String,
        /// The header as it arrived (rendered).
        value: String,
    },
    /// The event is of a version this handler does not know yet.
    #[error(
        "{event_type} version {version} is newer than version {known}, the newest this handler \
         knows: deploy a consumer that knows version {version}, then replay this dead letter"
    )]
    Newer {
        /// The event type.
        event_type: String,
        /// The version the event carries.
        version: u32,
        /// The version the handler's event type is.
        known: u32,
    },
    /// No upcaster is registered for one step of the way.
    #[error(
        "{event_type} version {from} cannot be read: the handler knows version {known} and no \
         upcaster from version {from} to {to} is registered (WorkerBuilder::upcast)",
        to = from + 1
    )]
    NoUpcaster {
        /// The event type.
        event_type: String,
        /// The version the missing step starts from.
        from: u32,
        /// The version the handler's event type is.
        known: u32,
    },
    /// An upcaster refused the payload.
    #[error("upcasting {event_type} from version {from} to {to} failed: {reason}", to = from + 1)]
    Failed {
        /// The event type.
        event_type: String,
        /// The version the step starts from.
        from: u32,
        /// What the upcaster said.
        reason: String,
    },
}

/// The version an event's headers declare ([`FIRST_VERSION`] when they do not).
pub(crate) fn version_of(headers: &Headers, event_type: &str) -> Result<u32, VersionError> {
    let Some(value) = headers.get(EVENT_VERSION_HEADER) else {
        return Ok(FIRST_VERSION);
    };
    value
        .as_i128()
        .and_then(|v| u32::try_from(v).ok())
        .filter(|v| *v >= FIRST_VERSION)
        .ok_or_else(|| VersionError::Invalid {
            event_type: event_type.to_owned(),
            value: match value {
                HeaderValue::ShortString(_) | HeaderValue::LongString(_) => {
                    format!("{:?}", value.as_str().unwrap_or("(not UTF-8)"))
                }
                other => other.to_plain_json().to_string(),
            },
        })
}

type Step = Arc<dyn Fn(Value) -> Result<Value, String> + Send + Sync>;

/// The upcasters of a worker: for an event type and a version, the function that turns that
/// version's JSON into the next version's.
///
/// ```
/// use serde_json::{json, Value};
/// use worker_core::Upcasters;
///
/// let upcasters = Upcasters::new()
///     // v1 had `amount` in euros; v2 has `amountCents`.
///     .upcast("OrderPlaced", 1, |mut v: Value| {
///         let euros = v["amount"].as_i64().ok_or("v1 `amount` is not an integer")?;
///         v["amountCents"] = json!(euros * 100);
///         Ok::<_, &str>(v)
///     })
///     // v3 added `currency`, defaulting to EUR for older events.
///     .upcast("OrderPlaced", 2, |mut v: Value| {
///         v["currency"] = json!("EUR");
///         Ok::<_, std::convert::Infallible>(v)
///     });
/// let v3 = upcasters.apply("OrderPlaced", 1, 3, json!({"orderId": "ord_1", "amount": 49})).unwrap();
/// assert_eq!(v3, json!({"orderId": "ord_1", "amount": 49, "amountCents": 4900, "currency": "EUR"}));
/// ```
#[derive(Clone, Default)]
pub struct Upcasters {
    steps: BTreeMap<(String, u32), Step>,
}

impl fmt::Debug for Upcasters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(
                self.steps
                    .keys()
                    .map(|(event_type, from)| format!("{event_type} v{from} -> v{}", from + 1)),
            )
            .finish()
    }
}

impl Upcasters {
    /// No upcasters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the step that turns `event_type`'s version `from` into version `from + 1`. An
    /// `Err` from the step dead-letters the event as poison, with the error in the record.
    ///
    /// # Panics
    ///
    /// If `from` is 0, or a step from `from` is already registered for `event_type` (two
    /// different ways to read one version are a mistake to catch at start).
    pub fn upcast<F, E>(mut self, event_type: impl Into<String>, from: u32, step: F) -> Self
    where
        F: Fn(Value) -> Result<Value, E> + Send + Sync + 'static,
        E: fmt::Display,
    {
        let event_type = event_type.into();
        assert!(
            from >= FIRST_VERSION,
            "upcaster for {event_type}: versions start at {FIRST_VERSION}, so `from` is at least {FIRST_VERSION}"
        );
        let step: Step = Arc::new(move |value| step(value).map_err(|e| e.to_string()));
        let previous = self.steps.insert((event_type.clone(), from), step);
        assert!(
            previous.is_none(),
            "two upcasters for {event_type} from version {from}: register one per step"
        );
        self
    }

    /// Whether no step is registered.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Brings `value`, `event_type` at version `from`, to version `to` (`from <= to`) through the
    /// registered steps.
    pub fn apply(
        &self,
        event_type: &str,
        from: u32,
        to: u32,
        mut value: Value,
    ) -> Result<Value, VersionError> {
        for version in from..to {
            let step = self
                .steps
                .get(&(event_type.to_owned(), version))
                .ok_or_else(|| VersionError::NoUpcaster {
                    event_type: event_type.to_owned(),
                    from: version,
                    known: to,
                })?;
            value = step(value).map_err(|reason| VersionError::Failed {
                event_type: event_type.to_owned(),
                from: version,
                reason,
            })?;
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn headers(value: HeaderValue) -> Headers {
        Headers::from([(EVENT_VERSION_HEADER.to_owned(), value)])
    }

    #[test]
    fn reads_the_version_header() {
        assert_eq!(version_of(&Headers::new(), "E"), Ok(1));
        assert_eq!(version_of(&headers(HeaderValue::I32(3)), "E"), Ok(3));
        assert_eq!(version_of(&headers(HeaderValue::string("2")), "E"), Ok(2));
        for bad in [
            HeaderValue::I32(0),
            HeaderValue::I64(-1),
            HeaderValue::string("v2"),
            HeaderValue::Bool(true),
        ] {
            let error = version_of(&headers(bad.clone()), "OrderPlaced").unwrap_err();
            assert!(
                error
                    .to_string()
                    .starts_with("x-event-version of OrderPlaced is "),
                "{bad:?}: {error}"
            );
        }
        assert_eq!(
            version_of(&headers(HeaderValue::string("v2")), "E")
                .unwrap_err()
                .to_string(),
            "x-event-version of E is \"v2\", not a positive integer version"
        );
    }

    #[test]
    fn chains_steps_and_names_the_missing_one() {
        let upcasters = Upcasters::new()
            .upcast("E", 1, |mut v: Value| {
                v["b"] = json!(2);
                Ok::<_, String>(v)
            })
            .upcast("E", 2, |mut v: Value| {
                v["c"] = json!(3);
                Ok::<_, String>(v)
            })
            .upcast("E", 3, |_| Err("v3 payloads without `c` cannot be read"));
        assert_eq!(
            upcasters.apply("E", 1, 3, json!({"a": 1})).unwrap(),
            json!({"a": 1, "b": 2, "c": 3})
        );
        assert_eq!(
            upcasters.apply("E", 2, 3, json!({})).unwrap(),
            json!({"c": 3})
        );
        assert_eq!(upcasters.apply("E", 3, 3, json!(1)).unwrap(), json!(1));
        assert_eq!(
            upcasters
                .apply("E", 3, 4, json!({}))
                .unwrap_err()
                .to_string(),
            "upcasting E from version 3 to 4 failed: v3 payloads without `c` cannot be read"
        );
        assert_eq!(
            upcasters.apply("E", 3, 5, json!({})).unwrap_err(),
            VersionError::Failed {
                event_type: "E".into(),
                from: 3,
                reason: "v3 payloads without `c` cannot be read".into()
            }
        );
        assert_eq!(
            upcasters
                .apply("F", 1, 2, json!({}))
                .unwrap_err()
                .to_string(),
            "F version 1 cannot be read: the handler knows version 2 and no upcaster from \
             version 1 to 2 is registered (WorkerBuilder::upcast)"
        );
        assert_eq!(
            format!("{upcasters:?}"),
            r#"{"E v1 -> v2", "E v2 -> v3", "E v3 -> v4"}"#
        );
    }

    #[test]
    #[should_panic(expected = "two upcasters for E from version 1")]
    fn one_step_per_version() {
        let _ = Upcasters::new()
            .upcast("E", 1, Ok::<_, String>)
            .upcast("E", 1, Ok::<_, String>);
    }
}
