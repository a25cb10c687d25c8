//! The events the order worker consumes.

use serde::Deserialize;

/// Published by the checkout service when a customer places an order (amount in cents).
///
/// ```json
/// {"orderId": "ord_91", "userId": "usr_12", "amount": 4900}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderPlaced {
    /// The order.
    pub order_id: String,
    /// The customer.
    pub user_id: String,
    /// The amount to charge, in cents.
    pub amount: i64,
}

/// Emitted by `charge-on-order-placed` through the transactional outbox once an order is paid
/// (published by the outbox relay if and only if the charge committed).
///
/// ```json
/// {"orderId": "ord_91", "userId": "usr_12", "amount": 4900, "version": 1}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderPaid {
    /// The order.
    pub order_id: String,
    /// The customer.
    pub user_id: String,
    /// The amount charged, in cents.
    pub amount: i64,
    /// The order's version after the payment: `ship-order` ignores an older one.
    pub version: i64,
}
