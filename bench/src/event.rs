//! The benchmark's event: a ~200-byte JSON order, its id and its publish time.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Header carrying the publish time in microseconds since the Unix epoch (AMQP's `timestamp`
/// property has only seconds).
pub const PUBLISHED_HEADER: &str = "x-bench-published-us";

/// The payload every scenario decodes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BenchEvent {
    /// The order.
    pub order_id: String,
    /// Who placed it.
    pub user_id: String,
    /// In cents.
    pub amount: i64,
    /// ISO code.
    pub currency: String,
    /// What was ordered.
    pub items: Vec<Item>,
    /// Padding to the wanted payload size.
    pub note: String,
}

/// One line of an order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Item {
    /// Stock keeping unit.
    pub sku: String,
    /// Quantity.
    pub qty: u32,
}

/// The event id of event `seq`.
pub fn event_id(seq: u64) -> String {
    format!("evt-{seq}")
}

/// The sequence number in an event id made by [`event_id`].
pub fn seq_of(event_id: &str) -> Option<usize> {
    event_id.strip_prefix("evt-")?.parse().ok()
}

/// The JSON body of event `seq`, padded to about `size` bytes.
pub fn body(seq: u64, size: usize) -> Vec<u8> {
    let mut event = BenchEvent {
        order_id: format!("ord_{seq:08}"),
        user_id: format!("usr_{:05}", seq % 10_007),
        amount: 100 + (seq % 9_900) as i64,
        currency: "EUR".into(),
        items: vec![
            Item {
                sku: format!("sku_{:04}", seq % 997),
                qty: 1 + (seq % 3) as u32,
            },
            Item {
                sku: format!("sku_{:04}", seq % 991),
                qty: 1,
            },
        ],
        note: String::new(),
    };
    let bare = serde_json::to_vec(&event).expect("serializes").len();
    event.note = "x".repeat(size.saturating_sub(bare));
    serde_json::to_vec(&event).expect("serializes")
}

/// Microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}
