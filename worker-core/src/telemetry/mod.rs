//! Telemetry: one trace across every attempt of an event ([`propagation`]), Prometheus metrics
//! ([`metrics`]), liveness and readiness ([`health`]), the HTTP endpoint serving them
//! ([`server`]), and the log and trace pipeline ([`logging`]).

pub(crate) mod health;
pub(crate) mod lag;
pub mod logging;
pub(crate) mod metrics;
pub(crate) mod propagation;
pub mod server;
