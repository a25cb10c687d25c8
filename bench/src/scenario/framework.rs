//! (b) and (d): the framework itself, a `Worker` with one `#[handler]`, timed by an observer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgConnection;
use worker_core::transport::message::HeaderValue;
use worker_core::Settlement;
use worker_core::{handler, Context, HandlerError, InboundMessage, Observer};
use worker_rabbitmq::Worker;

use crate::cli::Scenario;
use crate::event::{seq_of, BenchEvent, PUBLISHED_HEADER};
use crate::namespace::Namespace;
use crate::recorder::Recorder;
use crate::BoxError;

/// (b): decodes the event and does nothing.
#[handler(event = "BenchNoop", name = "noop")]
pub async fn noop(event: BenchEvent) -> Result<(), HandlerError> {
    let _ = event;
    Ok(())
}

/// (d): the business insert, in the dedup transaction.
#[handler(event = "BenchDedup", name = "dedup", dedup)]
pub async fn dedup_insert(
    event: BenchEvent,
    tx: &mut PgConnection,
    ctx: &Context,
) -> Result<(), HandlerError> {
    sqlx::query(
        "INSERT INTO bench_effects (event_id, scenario, order_id, amount) VALUES ($1, 'd', $2, $3)",
    )
    .bind(ctx.event_id())
    .bind(&event.order_id)
    .bind(event.amount)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Feeds the recorder: the publish time from the headers at `received`, done at `settled`.
#[derive(Debug)]
struct Timing(Arc<Recorder>);

/// Counts the committed dedup transactions and the deliveries they held.
#[derive(Debug, Default, Clone)]
struct Transactions {
    count: Arc<AtomicU64>,
    deliveries: Arc<AtomicU64>,
}

impl Observer for Transactions {
    fn batch_committed(&self, _handler: &str, size: usize) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.deliveries.fetch_add(size as u64, Ordering::Relaxed);
    }
}

impl Observer for Timing {
    fn received(&self, _handler: &str, message: &InboundMessage) {
        self.0.received();
        let seq = message.properties.message_id.as_deref().and_then(seq_of);
        let published = match message.properties.headers.get(PUBLISHED_HEADER) {
            Some(HeaderValue::I64(us)) => u64::try_from(*us).ok(),
            _ => None,
        };
        if let (Some(seq), Some(published)) = (seq, published) {
            self.0.hold(seq, published);
        }
    }

    fn settled(&self, settlement: &Settlement<'_>) {
        let published = settlement
            .event_id
            .and_then(seq_of)
            .and_then(|seq| self.0.take(seq));
        let ok = settlement.acked && matches!(settlement.outcome, "ok" | "duplicate");
        self.0.done(published, ok);
    }
}

/// Runs the worker with scenario `scenario`'s handler until `recorder` is complete.
pub async fn run(
    scenario: Scenario,
    namespace: &Namespace,
    recorder: &Arc<Recorder>,
    timeout: Duration,
) -> Result<(), BoxError> {
    let transactions = Transactions::default();
    let builder = Worker::builder()
        .config(namespace.config.clone())
        .broker(namespace.broker.clone())
        .observer(Timing(Arc::clone(recorder)))
        .observer(transactions.clone());
    let builder = match scenario {
        Scenario::D => builder.handler(dedup_insert),
        _ => builder.handler(noop),
    };
    let worker = builder.start().await?;
    super::ready();
    let _ = recorder.wait(timeout).await;
    worker.shutdown().await?;
    let count = transactions.count.load(Ordering::Relaxed);
    if count > 0 {
        let deliveries = transactions.deliveries.load(Ordering::Relaxed);
        eprintln!(
            "{}: {count} dedup transactions, {:.1} deliveries each on average",
            scenario.title(),
            deliveries as f64 / count as f64
        );
    }
    Ok(())
}
