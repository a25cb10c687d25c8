//! RabbitMQ's attributes on the core's spans (OpenTelemetry messaging semantic conventions):
//! `messaging.system = "rabbitmq"` and the routing key; on a publish span the destination is the
//! default exchange (`""`) and the routing key, the delay or dead-letter queue, is recorded when
//! the transport publishes (see `settle`).

use worker_core::transport::{process_span, publish_span, ProcessSpan, PublishSpan, Spans};

/// The span attribute holding the routing key of a delivery or publish.
/// The log filter when `RUST_LOG` is not set: `info`, with lapin's own lines off. The worker
/// reports what they would say itself, once and with what to do (`RabbitMQ connection lost ...`,
/// a start-up error naming the cause); lapin logs the same connection error two or three times
/// at ERROR. `RUST_LOG=info,lapin=info` brings them back.
pub(crate) const DEFAULT_LOG_FILTER: &str = "info,lapin=off";

pub(crate) const ROUTING_KEY: &str = "messaging.rabbitmq.destination.routing_key";

/// The RabbitMQ transport's [`Spans`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RabbitSpans;

impl Spans for RabbitSpans {
    fn process(&self, span: &ProcessSpan<'_>) -> tracing::Span {
        process_span!(
            span,
            "messaging.system" = "rabbitmq",
            "messaging.rabbitmq.destination.routing_key" = span.routing_key,
        )
    }

    fn publish(&self, span: &PublishSpan) -> tracing::Span {
        publish_span!(
            span,
            "messaging.system" = "rabbitmq",
            "messaging.destination.name" = "",
            "messaging.rabbitmq.destination.routing_key" = tracing::field::Empty,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::{Arc, Mutex};

    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Metadata, Subscriber};
    use worker_core::transport::{PublishKind, PROCESS_RECORDED_FIELDS};

    /// Collects the fields of every new span as `name=value` text.
    #[derive(Default, Clone)]
    struct Fields(Arc<Mutex<Vec<(String, String)>>>);

    impl Visit for Fields {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            self.0
                .lock()
                .expect("not poisoned")
                .push((field.name().to_owned(), format!("{value:?}")));
        }
        fn record_str(&mut self, field: &Field, value: &str) {
            self.0
                .lock()
                .expect("not poisoned")
                .push((field.name().to_owned(), value.to_owned()));
        }
    }

    impl Subscriber for Fields {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, span: &Attributes<'_>) -> Id {
            span.record(&mut self.clone());
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, _: &Event<'_>) {}
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    fn fields_of(make: impl FnOnce() -> tracing::Span) -> (Vec<(String, String)>, Vec<String>) {
        let fields = Fields::default();
        let span = tracing::subscriber::with_default(fields.clone(), make);
        let declared = span
            .metadata()
            .expect("enabled")
            .fields()
            .iter()
            .map(|f| f.name().to_owned())
            .collect();
        let values = fields.0.lock().expect("not poisoned").clone();
        (values, declared)
    }

    #[test]
    fn the_process_span_names_rabbitmq_and_the_routing_key() {
        let (values, declared) = fields_of(|| {
            RabbitSpans.process(&ProcessSpan {
                handler: "charge",
                event_id: "evt_1",
                event_type: "OrderPlaced",
                attempt: 2,
                exchange: "events",
                routing_key: "OrderPlaced",
                correlation_id: "",
                body_size: 12,
            })
        });
        let value = |name: &str| {
            values
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(value("messaging.system"), Some("rabbitmq"));
        assert_eq!(value(ROUTING_KEY), Some("OrderPlaced"));
        assert_eq!(value("messaging.destination.name"), Some("events"));
        assert_eq!(value("otel.name"), Some("process charge"));
        assert_eq!(value("worker.attempt"), Some("2"));
        for name in PROCESS_RECORDED_FIELDS {
            assert!(declared.iter().any(|d| d == name), "{name} declared");
        }
    }

    #[test]
    fn a_publish_span_goes_to_the_default_exchange_with_its_queue_recorded_later() {
        let (values, declared) = fields_of(|| {
            RabbitSpans.publish(&PublishSpan {
                handler: "charge",
                kind: PublishKind::Retry,
            })
        });
        let value = |name: &str| {
            values
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(value("otel.name"), Some("publish charge.retry"));
        assert_eq!(value("messaging.system"), Some("rabbitmq"));
        assert_eq!(value("messaging.destination.name"), Some(""));
        assert_eq!(value(ROUTING_KEY), None, "recorded when published");
        assert!(declared.iter().any(|d| d == ROUTING_KEY));
        assert!(declared.iter().any(|d| d == "otel.status_code"));
    }
}
