//! Message header tables, kept with their wire types (sized integers, decimals, timestamps,
//! byte arrays, nested tables) so nothing is lost on the way to a dead-letter record and back.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{json, Map, Value};

/// A header table: name to typed value, ordered by name.
pub type Headers = BTreeMap<String, HeaderValue>;

/// One header value with its wire type (the one-letter tags are the field-table type codes).
#[derive(Debug, Clone, PartialEq)]
pub enum HeaderValue {
    /// `t`
    Bool(bool),
    /// `b`
    I8(i8),
    /// `B`
    U8(u8),
    /// `s`
    I16(i16),
    /// `u`
    U16(u16),
    /// `I`
    I32(i32),
    /// `i`
    U32(u32),
    /// `l`
    I64(i64),
    /// `f`
    F32(f32),
    /// `d`
    F64(f64),
    /// `D`: `value / 10^scale`
    Decimal {
        /// Number of decimal digits.
        scale: u8,
        /// Unscaled value.
        value: u32,
    },
    /// Short string (UTF-8 by the spec; kept as given).
    ShortString(String),
    /// `S`: long string, raw bytes (usually UTF-8, not always).
    LongString(Vec<u8>),
    /// `A`
    Array(Vec<HeaderValue>),
    /// `T`: seconds since the Unix epoch.
    Timestamp(u64),
    /// `F`
    Table(Headers),
    /// `x`
    ByteArray(Vec<u8>),
    /// `V`
    Void,
}

/// Text is a long string (`S`), as producers usually send it.
impl From<&str> for HeaderValue {
    fn from(text: &str) -> Self {
        HeaderValue::string(text)
    }
}

/// Text is a long string (`S`), as producers usually send it.
impl From<String> for HeaderValue {
    fn from(text: String) -> Self {
        HeaderValue::string(text)
    }
}

impl From<i64> for HeaderValue {
    fn from(value: i64) -> Self {
        HeaderValue::I64(value)
    }
}

impl From<bool> for HeaderValue {
    fn from(value: bool) -> Self {
        HeaderValue::Bool(value)
    }
}

impl HeaderValue {
    /// A long string from text.
    pub fn string(text: impl Into<String>) -> Self {
        HeaderValue::LongString(text.into().into_bytes())
    }

    /// The value as text, when it is a (long or short) string of valid UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            HeaderValue::ShortString(s) => Some(s),
            HeaderValue::LongString(bytes) | HeaderValue::ByteArray(bytes) => {
                std::str::from_utf8(bytes).ok()
            }
            _ => None,
        }
    }

    /// The value as an integer, for any integer type (or a string that parses as one).
    pub fn as_i128(&self) -> Option<i128> {
        match *self {
            HeaderValue::I8(v) => Some(v.into()),
            HeaderValue::U8(v) => Some(v.into()),
            HeaderValue::I16(v) => Some(v.into()),
            HeaderValue::U16(v) => Some(v.into()),
            HeaderValue::I32(v) => Some(v.into()),
            HeaderValue::U32(v) => Some(v.into()),
            HeaderValue::I64(v) => Some(v.into()),
            HeaderValue::Timestamp(v) => Some(v.into()),
            _ => self.as_str().and_then(|s| s.trim().parse().ok()),
        }
    }

    /// A readable JSON rendering (strings as strings, numbers as numbers); bytes that are not
    /// UTF-8 become `{"base64": "..."}`. Lossy about wire types: use the serde form for that.
    pub fn to_plain_json(&self) -> Value {
        match self {
            HeaderValue::Bool(v) => json!(v),
            HeaderValue::I8(v) => json!(v),
            HeaderValue::U8(v) => json!(v),
            HeaderValue::I16(v) => json!(v),
            HeaderValue::U16(v) => json!(v),
            HeaderValue::I32(v) => json!(v),
            HeaderValue::U32(v) => json!(v),
            HeaderValue::I64(v) => json!(v),
            HeaderValue::F32(v) => json!(v),
            HeaderValue::F64(v) => json!(v),
            HeaderValue::Decimal { scale, value } => json!({ "decimal": value, "scale": scale }),
            HeaderValue::ShortString(s) => json!(s),
            HeaderValue::LongString(b) | HeaderValue::ByteArray(b) => {
                match std::str::from_utf8(b) {
                    Ok(s) => json!(s),
                    Err(_) => json!({ "base64": BASE64.encode(b) }),
                }
            }
            HeaderValue::Array(items) => {
                Value::Array(items.iter().map(HeaderValue::to_plain_json).collect())
            }
            HeaderValue::Timestamp(v) => json!(v),
            HeaderValue::Table(t) => plain_json(t),
            HeaderValue::Void => Value::Null,
        }
    }

    fn type_tag(&self) -> &'static str {
        match self {
            HeaderValue::Bool(_) => "bool",
            HeaderValue::I8(_) => "i8",
            HeaderValue::U8(_) => "u8",
            HeaderValue::I16(_) => "i16",
            HeaderValue::U16(_) => "u16",
            HeaderValue::I32(_) => "i32",
            HeaderValue::U32(_) => "u32",
            HeaderValue::I64(_) => "i64",
            HeaderValue::F32(_) => "f32",
            HeaderValue::F64(_) => "f64",
            HeaderValue::Decimal { .. } => "decimal",
            HeaderValue::ShortString(_) => "shortstr",
            HeaderValue::LongString(_) => "longstr",
            HeaderValue::Array(_) => "array",
            HeaderValue::Timestamp(_) => "timestamp",
            HeaderValue::Table(_) => "table",
            HeaderValue::ByteArray(_) => "bytes",
            HeaderValue::Void => "void",
        }
    }
}

/// Renders a header table as a readable JSON object (see [`HeaderValue::to_plain_json`]).
pub(crate) fn plain_json(headers: &Headers) -> Value {
    Value::Object(
        headers
            .iter()
            .map(|(k, v)| (k.clone(), v.to_plain_json()))
            .collect::<Map<_, _>>(),
    )
}

fn float_json(v: f64) -> Value {
    if v.is_finite() {
        json!(v)
    } else {
        json!(v.to_string())
    }
}

fn float_from(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn bytes_json(obj: &mut Map<String, Value>, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(s) => obj.insert("value".into(), json!(s)),
        Err(_) => obj.insert("base64".into(), json!(BASE64.encode(bytes))),
    };
}

/// Lossless form: `{"type": "i32", "value": 5}`; bytes that are not UTF-8 as
/// `{"type": "longstr", "base64": "..."}`.
impl Serialize for HeaderValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut obj = Map::new();
        obj.insert("type".into(), json!(self.type_tag()));
        match self {
            HeaderValue::Bool(v) => drop(obj.insert("value".into(), json!(v))),
            HeaderValue::I8(v) => drop(obj.insert("value".into(), json!(v))),
            HeaderValue::U8(v) => drop(obj.insert("value".into(), json!(v))),
            HeaderValue::I16(v) => drop(obj.insert("value".into(), json!(v))),
            HeaderValue::U16(v) => drop(obj.insert("value".into(), json!(v))),
            HeaderValue::I32(v) => drop(obj.insert("value".into(), json!(v))),
            HeaderValue::U32(v) => drop(obj.insert("value".into(), json!(v))),
            HeaderValue::I64(v) => drop(obj.insert("value".into(), json!(v))),
            HeaderValue::F32(v) => drop(obj.insert("value".into(), float_json(f64::from(*v)))),
            HeaderValue::F64(v) => drop(obj.insert("value".into(), float_json(*v))),
            HeaderValue::Decimal { scale, value } => {
                obj.insert("scale".into(), json!(scale));
                obj.insert("value".into(), json!(value));
            }
            HeaderValue::ShortString(s) => drop(obj.insert("value".into(), json!(s))),
            HeaderValue::LongString(b) | HeaderValue::ByteArray(b) => bytes_json(&mut obj, b),
            HeaderValue::Array(items) => {
                let items = items
                    .iter()
                    .map(serde_json::to_value)
                    .collect::<Result<Vec<_>, _>>();
                obj.insert(
                    "value".into(),
                    Value::Array(items.map_err(serde::ser::Error::custom)?),
                );
            }
            HeaderValue::Timestamp(v) => drop(obj.insert("value".into(), json!(v))),
            HeaderValue::Table(t) => {
                obj.insert(
                    "value".into(),
                    serde_json::to_value(t).map_err(serde::ser::Error::custom)?,
                );
            }
            HeaderValue::Void => {}
        }
        Value::Object(obj).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for HeaderValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let value = Value::deserialize(deserializer)?;
        let obj = value
            .as_object()
            .ok_or_else(|| D::Error::custom("header value must be an object"))?;
        let tag = obj
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| D::Error::custom("header value without `type`"))?;
        let v = obj.get("value").cloned().unwrap_or(Value::Null);
        let bad = || D::Error::custom(format!("invalid `{tag}` header value"));
        let int = |v: &Value| v.as_i64().ok_or_else(bad);
        let bytes = || -> Result<Vec<u8>, D::Error> {
            if let Some(b64) = obj.get("base64").and_then(Value::as_str) {
                return BASE64.decode(b64).map_err(D::Error::custom);
            }
            v.as_str().map(|s| s.as_bytes().to_vec()).ok_or_else(bad)
        };
        Ok(match tag {
            "bool" => HeaderValue::Bool(v.as_bool().ok_or_else(bad)?),
            "i8" => HeaderValue::I8(int(&v)?.try_into().map_err(|_| bad())?),
            "u8" => HeaderValue::U8(int(&v)?.try_into().map_err(|_| bad())?),
            "i16" => HeaderValue::I16(int(&v)?.try_into().map_err(|_| bad())?),
            "u16" => HeaderValue::U16(int(&v)?.try_into().map_err(|_| bad())?),
            "i32" => HeaderValue::I32(int(&v)?.try_into().map_err(|_| bad())?),
            "u32" => HeaderValue::U32(int(&v)?.try_into().map_err(|_| bad())?),
            "i64" => HeaderValue::I64(int(&v)?),
            "f32" => HeaderValue::F32(float_from(&v).ok_or_else(bad)? as f32),
            "f64" => HeaderValue::F64(float_from(&v).ok_or_else(bad)?),
            "decimal" => HeaderValue::Decimal {
                scale: obj
                    .get("scale")
                    .and_then(Value::as_u64)
                    .and_then(|s| s.try_into().ok())
                    .ok_or_else(bad)?,
                value: v.as_u64().and_then(|s| s.try_into().ok()).ok_or_else(bad)?,
            },
            "shortstr" => HeaderValue::ShortString(v.as_str().ok_or_else(bad)?.to_owned()),
            "longstr" => HeaderValue::LongString(bytes()?),
            "bytes" => HeaderValue::ByteArray(bytes()?),
            "array" => HeaderValue::Array(serde_json::from_value(v).map_err(D::Error::custom)?),
            "timestamp" => HeaderValue::Timestamp(v.as_u64().ok_or_else(bad)?),
            "table" => HeaderValue::Table(serde_json::from_value(v).map_err(D::Error::custom)?),
            "void" => HeaderValue::Void,
            other => return Err(D::Error::custom(format!("unknown header type `{other}`"))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_round_trips_through_json() {
        let mut nested = Headers::new();
        nested.insert("n".into(), HeaderValue::I16(-3));
        let mut h = Headers::new();
        h.insert("bool".into(), HeaderValue::Bool(true));
        h.insert("i8".into(), HeaderValue::I8(-8));
        h.insert("u8".into(), HeaderValue::U8(8));
        h.insert("u16".into(), HeaderValue::U16(16));
        h.insert("i32".into(), HeaderValue::I32(-32));
        h.insert("u32".into(), HeaderValue::U32(32));
        h.insert("i64".into(), HeaderValue::I64(i64::MIN));
        h.insert("f32".into(), HeaderValue::F32(1.5));
        h.insert(
            "f64".into(),
            HeaderValue::F64(f64::NAN.copysign(1.0).min(2.25)),
        );
        h.insert("inf".into(), HeaderValue::F64(f64::INFINITY));
        h.insert(
            "dec".into(),
            HeaderValue::Decimal {
                scale: 2,
                value: 4900,
            },
        );
        h.insert("short".into(), HeaderValue::ShortString("s".into()));
        h.insert("text".into(), HeaderValue::string("00-abc"));
        h.insert(
            "binary".into(),
            HeaderValue::LongString(vec![0xff, 0x00, 0xfe]),
        );
        h.insert("bytes".into(), HeaderValue::ByteArray(vec![1, 2]));
        h.insert(
            "array".into(),
            HeaderValue::Array(vec![HeaderValue::Void, HeaderValue::I64(1)]),
        );
        h.insert("ts".into(), HeaderValue::Timestamp(1_700_000_000));
        h.insert("table".into(), HeaderValue::Table(nested));
        let json = serde_json::to_string(&h).unwrap();
        let back: Headers = serde_json::from_str(&json).unwrap();
        assert_eq!(back, h);
        assert_eq!(plain_json(&h)["binary"], json!({ "base64": "/wD+" }));
        assert_eq!(plain_json(&h)["text"], json!("00-abc"));
    }

    #[test]
    fn integers_read_from_any_type() {
        assert_eq!(HeaderValue::U8(3).as_i128(), Some(3));
        assert_eq!(HeaderValue::string(" 7 ").as_i128(), Some(7));
        assert_eq!(HeaderValue::string("seven").as_i128(), None);
        assert_eq!(HeaderValue::Bool(true).as_i128(), None);
    }
}
