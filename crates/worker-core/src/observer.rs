//! Hooks into the pipeline for telemetry (and for tests that inject faults).

/// Called by the pipeline and the transport at the points where a delivery's fate changes.
///
/// Every method has an empty default; implement the ones you need. Methods run on the delivery's
/// task, so keep them quick.
pub trait Observer: Send + Sync + 'static {
    /// A dedup handler's transaction committed; the delivery is not acked yet.
    fn committed(&self, handler: &str, event_id: &str) {
        let _ = (handler, event_id);
    }

    /// The transport settled a delivery. `outcome` is
    /// [`Disposition::outcome_name`](crate::Disposition::outcome_name); `acked` says whether it
    /// was acked (`false`: given back to the broker).
    fn settled(&self, handler: &str, event_id: Option<&str>, outcome: &'static str, acked: bool) {
        let _ = (handler, event_id, outcome, acked);
    }
}

/// An observer that does nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopObserver;

impl Observer for NoopObserver {}
