//! The dedup store (DESIGN.md §6): `processed_events` keyed by `(handler, event_id)`.

pub mod identifier;
pub mod migrations;
pub mod store;
