//! Hooks into the pipeline for telemetry (and for tests that inject faults).

use std::sync::Arc;
use std::time::Duration;

use crate::handler::error::ErrorKind;
use crate::message::inbound::InboundMessage;

/// How one delivery was settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settlement<'a> {
    /// The handler.
    pub handler: &'a str,
    /// The event id, when the delivery had one.
    pub event_id: Option<&'a str>,
    /// `ok`, `duplicate`, `retry`, `dead_letter`, `give_back` (see
    /// [`Disposition::outcome_name`](crate::transport::pipeline::Disposition::outcome_name)) or
    /// `abandoned` (the shutdown deadline passed while the handler ran).
    pub outcome: &'static str,
    /// For `dead_letter`: `poison`, or `retryable` when the attempts ran out.
    pub error_kind: Option<ErrorKind>,
    /// Whether the delivery was acked (`false`: it went back to the broker).
    pub acked: bool,
    /// Time spent in the pipeline (decode, transaction, handler), without settling.
    pub duration: Duration,
}

/// Called by the pipeline and the transport at the points where a delivery's fate changes.
///
/// Every method has an empty default; implement the ones you need. Methods run on the delivery's
/// task, so keep them quick.
pub trait Observer: Send + Sync + 'static {
    /// A delivery arrived for `handler` and is about to be processed.
    fn received(&self, handler: &str, message: &InboundMessage) {
        let _ = (handler, message);
    }

    /// A dedup handler's transaction committed; the delivery is not acked yet.
    fn committed(&self, handler: &str, event_id: &str) {
        let _ = (handler, event_id);
    }

    /// A dedup transaction of `handler` committed; `size` deliveries shared it (1 unless they
    /// were batched). Called before [`Observer::committed`] for each of its processed events.
    fn batch_committed(&self, handler: &str, size: usize) {
        let _ = (handler, size);
    }

    /// The transport settled a delivery.
    fn settled(&self, settlement: &Settlement<'_>) {
        let _ = settlement;
    }
}

/// An observer that does nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopObserver;

impl Observer for NoopObserver {}

/// Several observers, called in order.
#[derive(Clone, Default)]
pub struct Observers(pub Vec<Arc<dyn Observer>>);

impl std::fmt::Debug for Observers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Observers({})", self.0.len())
    }
}

impl Observer for Observers {
    fn received(&self, handler: &str, message: &InboundMessage) {
        self.0.iter().for_each(|o| o.received(handler, message));
    }

    fn committed(&self, handler: &str, event_id: &str) {
        self.0.iter().for_each(|o| o.committed(handler, event_id));
    }

    fn batch_committed(&self, handler: &str, size: usize) {
        self.0.iter().for_each(|o| o.batch_committed(handler, size));
    }

    fn settled(&self, settlement: &Settlement<'_>) {
        self.0.iter().for_each(|o| o.settled(settlement));
    }
}
