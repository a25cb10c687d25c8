//! A delivery as the runtime sees it, independent of the broker client.

use serde::{Deserialize, Serialize};

use super::headers::Headers;

/// The properties of a message, kept as sent so a replay can republish them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Properties {
    /// `message_id`: the event id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// `type`: the event type.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// `content_type`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// `content_encoding`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_encoding: Option<String>,
    /// `correlation_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// `timestamp`, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<u64>,
    /// `delivery_mode`: 2 is persistent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_mode: Option<u8>,
    /// `priority`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    /// `reply_to`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// `expiration`, as sent (milliseconds, as a string).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration: Option<String>,
    /// `user_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// `app_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_id: Option<String>,
    /// `headers`, with their wire types.
    #[serde(default)]
    pub headers: Headers,
}

/// One delivery: body, routing information and properties.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InboundMessage {
    /// The exchange the message was published to (as delivered).
    pub exchange: String,
    /// The routing key it was published with (as delivered).
    pub routing_key: String,
    /// Whether the broker says it delivered this message before.
    pub redelivered: bool,
    /// The body, untouched.
    pub body: Vec<u8>,
    /// The properties and headers.
    pub properties: Properties,
}
