//! The `demo` subcommand's hook: an application registers a function that publishes a realistic
//! burst of its own events; the framework supplies the publisher and prints what was sent.
//!
//! ```no_run
//! use worker_rabbitmq::demo::{DemoPublisher, DemoError};
//! # fn builder() -> worker_rabbitmq::WorkerBuilder { unimplemented!() }
//!
//! async fn burst(events: DemoPublisher) -> Result<String, DemoError> {
//!     let order = serde_json::json!({"orderId": "ord_1", "userId": "usr_1", "amount": 4900});
//!     events.publish("OrderPlaced", "evt_demo_1", &order, "charged once").await?;
//!     Ok("look at the charges table".into())
//! }
//!
//! let worker = builder().demo(|events| Box::pin(burst(events)));
//! ```

use std::sync::{Arc, Mutex};

use worker_core::transport::message::Headers;
use worker_core::BoxFuture;

use crate::publisher::{PublishError, Publisher};

/// The application's demo: publishes events through the [`DemoPublisher`] and returns what the
/// user should look at next.
pub type DemoHook =
    Arc<dyn Fn(DemoPublisher) -> BoxFuture<'static, Result<String, DemoError>> + Send + Sync>;

/// Why the demo could not publish.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A publish was not confirmed.
    #[error("demo: {0}")]
    Publish(#[from] PublishError),
    /// The application's demo failed for a reason of its own.
    #[error("demo: {0}")]
    Other(String),
}

/// One event the demo published.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Published {
    /// The event type (routing key).
    pub event_type: String,
    /// The event id (`message_id`).
    pub event_id: String,
    /// The trace id of its `traceparent`: what `dlq list --trace-id` finds it by.
    pub trace_id: String,
    /// What should happen to it.
    pub expect: String,
}

/// Publishes the demo's events to the worker's exchange, as any producer would: persistent
/// JSON with `message_id`, the type as routing key and a fresh W3C `traceparent`, each confirmed.
#[derive(Debug, Clone)]
pub struct DemoPublisher {
    publisher: Arc<Publisher>,
    exchange: String,
    db_schema: String,
    published: Arc<Mutex<Vec<Published>>>,
}

impl DemoPublisher {
    pub(crate) fn new(publisher: Arc<Publisher>, exchange: String, db_schema: String) -> Self {
        Self {
            publisher,
            exchange,
            db_schema,
            published: Arc::default(),
        }
    }

    /// The worker's schema (`WORKER_DB_SCHEMA`), where its tables are: for the queries a demo
    /// suggests.
    pub fn db_schema(&self) -> &str {
        &self.db_schema
    }

    /// Publishes `payload` as event `event_id` of type `event_type`; `expect` says what should
    /// happen to it (shown to the user). Returns the event's trace id.
    pub async fn publish(
        &self,
        event_type: &str,
        event_id: &str,
        payload: &serde_json::Value,
        expect: &str,
    ) -> Result<String, DemoError> {
        let body = serde_json::to_vec(payload)
            .map_err(|e| DemoError::Other(format!("payload of {event_id}: {e}")))?;
        let trace_id = crate::produce::publish_event(
            &self.publisher,
            &self.exchange,
            event_type,
            event_id,
            body,
            Headers::new(),
        )
        .await?;
        if let Ok(mut published) = self.published.lock() {
            published.push(Published {
                event_type: event_type.into(),
                event_id: event_id.into(),
                trace_id: trace_id.clone(),
                expect: expect.into(),
            });
        }
        Ok(trace_id)
    }

    /// Everything published so far, in order.
    pub fn published(&self) -> Vec<Published> {
        self.published.lock().map(|p| p.clone()).unwrap_or_default()
    }
}
