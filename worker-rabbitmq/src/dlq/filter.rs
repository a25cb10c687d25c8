//! Which dead-letter entries a command applies to.

use chrono::{DateTime, Utc};
use worker_core::ErrorKind;

use worker_core::transport::dead_letter::RowStatus;

use super::browse::Entry;

/// Selects entries. Every criterion that is set must match; an empty filter matches everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Handler names (empty: every handler).
    pub handlers: Vec<String>,
    /// Event ids (empty: any).
    pub event_ids: Vec<String>,
    /// A prefix of the trace id (case-insensitive).
    pub trace_id: Option<String>,
    /// The event type.
    pub event_type: Option<String>,
    /// `poison` or `retryable`.
    pub error_kind: Option<ErrorKind>,
    /// Only entries whose last failure is at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only entries whose last failure is before this time.
    pub until: Option<DateTime<Utc>>,
    /// Only this failure group ([`fingerprint`](super::fingerprint())).
    pub fingerprint: Option<String>,
    /// Only rows of the store in this state (the store only; a queue holds pending ones).
    pub status: Option<RowStatus>,
    /// Read at most this many from the store, oldest first (a queue is always read whole).
    pub limit: Option<usize>,
}

impl Filter {
    /// Whether any criterion is set.
    pub fn is_empty(&self) -> bool {
        self.handlers.is_empty()
            && self.event_ids.is_empty()
            && self.trace_id.is_none()
            && self.event_type.is_none()
            && self.error_kind.is_none()
            && self.since.is_none()
            && self.until.is_none()
            && self.fingerprint.is_none()
            && self.status.is_none()
    }

    /// Whether `entry` is selected. An entry whose body is not a record matches only the
    /// handler and event-id criteria (it has nothing else to compare).
    pub fn matches(&self, handler: &str, entry: &Entry) -> bool {
        if !self.handlers.is_empty() && !self.handlers.iter().any(|h| h == handler) {
            return false;
        }
        if !self.event_ids.is_empty() {
            let id = entry.event_id();
            if !self.event_ids.iter().any(|e| Some(e) == id.as_ref()) {
                return false;
            }
        }
        let Ok(record) = &entry.record else {
            return self.trace_id.is_none()
                && self.event_type.is_none()
                && self.error_kind.is_none()
                && self.since.is_none()
                && self.until.is_none()
                && self.fingerprint.is_none();
        };
        let meta = &record.failure_metadata;
        if let Some(prefix) = &self.trace_id {
            if !meta
                .trace_id
                .to_ascii_lowercase()
                .starts_with(&prefix.to_ascii_lowercase())
            {
                return false;
            }
        }
        if let Some(kind) = &self.event_type {
            if &record.original_message.kind != kind {
                return false;
            }
        }
        if let Some(kind) = self.error_kind {
            if meta.error_kind != kind {
                return false;
            }
        }
        if let Some(since) = self.since {
            if meta.last_failed_at < since {
                return false;
            }
        }
        if let Some(until) = self.until {
            if meta.last_failed_at >= until {
                return false;
            }
        }
        if let Some(group) = &self.fingerprint {
            if &super::fingerprint(record) != group {
                return false;
            }
        }
        true
    }
}
