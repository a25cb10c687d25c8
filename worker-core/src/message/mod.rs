//! The broker-agnostic view of a delivery: its body, properties and typed headers.

pub(crate) mod headers;
pub(crate) mod inbound;
