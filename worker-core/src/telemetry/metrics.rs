//! Prometheus metrics, all prefixed `worker_`. Labels are low-cardinality: handler names, fixed
//! outcome names, fixed queue kinds.
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `worker_messages_total` | counter | handler, outcome, error_kind | deliveries settled: `ok`, `duplicate`, `retry`, `dead_letter` (error_kind `poison`/`retryable`), `give_back`, `abandoned` |
//! | `worker_handler_duration_seconds` | histogram | handler | time in the pipeline (decode, transaction, handler) |
//! | `worker_in_flight_messages` | gauge | handler | deliveries being processed now |
//! | `worker_redeliveries_total` | counter | handler | deliveries the broker flagged as redelivered |
//! | `worker_queue_messages` | gauge | handler, queue | ready messages in the `work` queue, the `retry` delay queues, the `dlq` (polled) |
//! | `worker_message_age_seconds` | histogram | handler | now − the message's `timestamp` property when processing starts |
//! | `worker_batch_size` | histogram | handler | deliveries per committed dedup transaction: 1 without a backlog, up to `WORKER_BATCH_SIZE` with one |
//! | `worker_lag_seconds` | gauge | handler | age of the oldest delivery the handler has taken and not settled (waiting for a slot, held by the breaker or a database outage, or in the handler); 0 when none; grows while the consumer stalls |
//! | `worker_breaker_state` | gauge | handler | the handler's circuit breaker: 0 closed, 1 open (not taking deliveries), 2 half-open (one probe delivery running) |
//! | `worker_ready` | gauge | | 1 when `/readyz` would answer ready (broker, database, every consumer), else 0; evaluated at each scrape |
//! | `worker_outbox_pending_events` | gauge | | outbox rows not yet published (polled by the relay) |
//! | `worker_dead_letters_pending` | gauge | handler | dead letters pending in the dead-letter store (`WORKER_DLQ_STORE=on`; polled every 15 s) |
//! | `worker_dead_letter_group_pending` | gauge | handler, fingerprint | pending dead letters of each handler's [`TOP_GROUPS`] largest failure groups; the rest summed as fingerprint `other` |

use std::sync::atomic::AtomicU64;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::message::inbound::InboundMessage;
use crate::observer::{Observer, Settlement};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    handler: String,
    outcome: String,
    error_kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandlerLabels {
    handler: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabels {
    handler: String,
    fingerprint: String,
}

/// How many failure groups per handler `worker_dead_letter_group_pending` names (the largest);
/// the others are summed under fingerprint `other`, so the label set stays small.
pub const TOP_GROUPS: usize = 5;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    handler: String,
    queue: String,
}

type HistogramFamily = Family<HandlerLabels, Histogram, fn() -> Histogram>;

/// Which of a handler's queues a depth belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueKind {
    /// The work queue: the consumer lag.
    Work,
    /// All delay queues together.
    Retry,
    /// The dead-letter queue.
    DeadLetter,
}

impl QueueKind {
    fn label(self) -> &'static str {
        match self {
            QueueKind::Work => "work",
            QueueKind::Retry => "retry",
            QueueKind::DeadLetter => "dlq",
        }
    }
}

/// The worker's metrics; an [`Observer`] that keeps them up to date.
pub struct Metrics {
    registry: Registry,
    messages: Family<OutcomeLabels, Counter>,
    duration: HistogramFamily,
    in_flight: Family<HandlerLabels, Gauge>,
    redeliveries: Family<HandlerLabels, Counter>,
    queue_depth: Family<QueueLabels, Gauge>,
    message_age: HistogramFamily,
    batch_size: HistogramFamily,
    lag: Family<HandlerLabels, Gauge<f64, AtomicU64>>,
    breaker: Family<HandlerLabels, Gauge>,
    ready: Gauge,
    outbox_pending: Gauge,
    dead_letters_pending: Family<HandlerLabels, Gauge>,
    dead_letter_groups: Family<GroupLabels, Gauge>,
    /// Each handler's unsettled deliveries, read into `lag` at each render.
    unsettled: std::sync::Mutex<Vec<std::sync::Arc<crate::telemetry::lag::Unsettled>>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16)) // 1 ms .. ~33 s
}

fn batch_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 8)) // 1 .. 128 deliveries
}

fn age_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 20)) // 10 ms .. ~1.5 h
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("worker");
        let messages = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "messages",
            "Deliveries settled, by handler and outcome",
            messages.clone(),
        );
        let duration: HistogramFamily = Family::new_with_constructor(duration_histogram);
        registry.register_with_unit(
            "handler_duration",
            "Time in the pipeline per delivery",
            Unit::Seconds,
            duration.clone(),
        );
        let in_flight = Family::<HandlerLabels, Gauge>::default();
        registry.register(
            "in_flight_messages",
            "Deliveries being processed",
            in_flight.clone(),
        );
        let redeliveries = Family::<HandlerLabels, Counter>::default();
        registry.register(
            "redeliveries",
            "Deliveries flagged as redelivered by the broker",
            redeliveries.clone(),
        );
        let queue_depth = Family::<QueueLabels, Gauge>::default();
        registry.register(
            "queue_messages",
            "Ready messages per handler queue (work = lag, retry, dlq)",
            queue_depth.clone(),
        );
        let message_age: HistogramFamily = Family::new_with_constructor(age_histogram);
        registry.register_with_unit(
            "message_age",
            "Age of messages when processing starts (now - the message's timestamp property)",
            Unit::Seconds,
            message_age.clone(),
        );
        let batch_size: HistogramFamily = Family::new_with_constructor(batch_histogram);
        registry.register(
            "batch_size",
            "Deliveries per committed dedup transaction",
            batch_size.clone(),
        );
        let lag = Family::<HandlerLabels, Gauge<f64, AtomicU64>>::default();
        registry.register_with_unit(
            "lag",
            "Age of the oldest delivery a handler has taken and not settled (0 when none)",
            Unit::Seconds,
            lag.clone(),
        );
        let breaker = Family::<HandlerLabels, Gauge>::default();
        registry.register(
            "breaker_state",
            "Circuit breaker per handler: 0 closed, 1 open, 2 half-open (probing)",
            breaker.clone(),
        );
        let ready = Gauge::default();
        registry.register(
            "ready",
            "1 when the worker is ready (broker, database, every consumer), else 0",
            ready.clone(),
        );
        let outbox_pending = Gauge::default();
        registry.register(
            "outbox_pending_events",
            "Outbox rows not yet published",
            outbox_pending.clone(),
        );
        let dead_letters_pending = Family::<HandlerLabels, Gauge>::default();
        registry.register(
            "dead_letters_pending",
            "Dead letters pending in the dead-letter store",
            dead_letters_pending.clone(),
        );
        let dead_letter_groups = Family::<GroupLabels, Gauge>::default();
        registry.register(
            "dead_letter_group_pending",
            "Pending dead letters of each handler's largest failure groups (the rest: other)",
            dead_letter_groups.clone(),
        );
        Self {
            registry,
            messages,
            duration,
            in_flight,
            redeliveries,
            queue_depth,
            message_age,
            batch_size,
            lag,
            breaker,
            ready,
            outbox_pending,
            dead_letters_pending,
            dead_letter_groups,
            unsettled: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Records a handler's lag: the age of its oldest delivery taken and not settled.
    pub fn set_lag_seconds(&self, handler_name: &str, seconds: f64) {
        self.lag.get_or_create(&handler(handler_name)).set(seconds);
    }

    /// Records a handler's circuit breaker state.
    pub fn set_breaker_state(&self, handler_name: &str, state: crate::breaker::BreakerState) {
        self.breaker
            .get_or_create(&handler(handler_name))
            .set(state.gauge_value());
    }

    /// Records whether the worker is ready.
    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// Records how many outbox rows wait to be published.
    pub fn set_outbox_pending(&self, rows: u64) {
        self.outbox_pending
            .set(i64::try_from(rows).unwrap_or(i64::MAX));
    }

    /// Records the dead-letter store's pending rows, from `(handler, fingerprint, count)` of
    /// every non-empty group (`""` for messages that are not records, shown as `unreadable`).
    /// `handlers` are reported with 0 when they have none; groups beyond each handler's
    /// [`TOP_GROUPS`] largest are summed as `other`, and groups that emptied disappear.
    pub fn set_dead_letters_pending(&self, handlers: &[&str], groups: &[(String, String, i64)]) {
        let mut by_handler: std::collections::BTreeMap<&str, Vec<(&str, i64)>> =
            handlers.iter().map(|h| (*h, Vec::new())).collect();
        for (handler, fingerprint, count) in groups {
            by_handler
                .entry(handler.as_str())
                .or_default()
                .push((fingerprint.as_str(), *count));
        }
        self.dead_letter_groups.clear();
        for (name, mut groups) in by_handler {
            groups.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
            let total: i64 = groups.iter().map(|g| g.1).sum();
            self.dead_letters_pending
                .get_or_create(&handler(name))
                .set(total);
            let other: i64 = groups.iter().skip(TOP_GROUPS).map(|g| g.1).sum();
            let labelled = groups.iter().take(TOP_GROUPS).map(|(f, c)| {
                let f = if f.is_empty() { "unreadable" } else { f };
                (f, *c)
            });
            for (fingerprint, count) in labelled.chain((other > 0).then_some(("other", other))) {
                self.dead_letter_groups
                    .get_or_create(&GroupLabels {
                        handler: name.into(),
                        fingerprint: fingerprint.into(),
                    })
                    .set(count);
            }
        }
    }

    /// Records a polled queue depth.
    pub fn set_queue_depth(&self, handler: &str, kind: QueueKind, messages: u32) {
        self.queue_depth
            .get_or_create(&QueueLabels {
                handler: handler.into(),
                queue: kind.label().into(),
            })
            .set(i64::from(messages));
    }

    /// Reports `worker_lag_seconds` of `unsettled`'s handler from its deliveries at each render.
    pub fn track_lag(&self, unsettled: std::sync::Arc<crate::telemetry::lag::Unsettled>) {
        self.set_lag_seconds(unsettled.handler(), 0.0);
        self.unsettled.lock().expect("metrics lock").push(unsettled);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        for unsettled in self.unsettled.lock().expect("metrics lock").iter() {
            self.set_lag_seconds(unsettled.handler(), unsettled.oldest_age_seconds());
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

fn handler(name: &str) -> HandlerLabels {
    HandlerLabels {
        handler: name.into(),
    }
}

impl Observer for Metrics {
    fn received(&self, name: &str, message: &InboundMessage) {
        self.in_flight.get_or_create(&handler(name)).inc();
        if message.redelivered {
            self.redeliveries.get_or_create(&handler(name)).inc();
        }
        if let Some(sent) = message.properties.timestamp {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            self.message_age
                .get_or_create(&handler(name))
                .observe((now - sent as f64).max(0.0));
        }
    }

    fn batch_committed(&self, name: &str, size: usize) {
        self.batch_size
            .get_or_create(&handler(name))
            .observe(size as f64);
    }

    fn settled(&self, s: &Settlement<'_>) {
        self.in_flight.get_or_create(&handler(s.handler)).dec();
        let labels = OutcomeLabels {
            handler: s.handler.into(),
            outcome: s.outcome.into(),
            error_kind: s
                .error_kind
                .map(|k| k.as_str().to_owned())
                .unwrap_or_default(),
        };
        self.messages.get_or_create(&labels).inc();
        self.duration
            .get_or_create(&handler(s.handler))
            .observe(s.duration.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn renders_prometheus_text_with_the_prefix_and_units() {
        let metrics = Metrics::new();
        let message = InboundMessage {
            redelivered: true,
            ..Default::default()
        };
        metrics.received("h", &message);
        let settled = Settlement {
            handler: "h",
            event_id: Some("e"),
            outcome: "dead_letter",
            error_kind: Some(ErrorKind::Poison),
            acked: true,
            duration: std::time::Duration::from_millis(3),
        };
        metrics.settled(&settled);
        metrics.set_queue_depth("h", QueueKind::DeadLetter, 1);
        let text = metrics.render();
        assert!(
            text.contains(
                r#"worker_messages_total{handler="h",outcome="dead_letter",error_kind="poison"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"worker_redeliveries_total{handler="h"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"worker_in_flight_messages{handler="h"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(r#"worker_queue_messages{handler="h",queue="dlq"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"worker_handler_duration_seconds_count{handler="h"} 1"#),
            "{text}"
        );
    }
}
