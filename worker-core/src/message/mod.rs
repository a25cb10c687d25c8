//! The broker-agnostic view of a delivery: its body, properties and typed headers.

pub mod headers;
pub mod inbound;
