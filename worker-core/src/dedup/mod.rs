//! The dedup store (`docs/contracts.md` §6): `processed_events` keyed by `(handler, event_id)`.

pub(crate) mod identifier;
pub(crate) mod migrations;
pub(crate) mod store;
