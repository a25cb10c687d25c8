//! Consuming one handler's work queue: up to `concurrency` deliveries in flight, each processed
//! by the pipeline and then settled.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::Acker;
use lapin::Channel;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use worker_core::observer::Settlement;
use worker_core::pipeline::Runtime;
use worker_core::registry::ErasedHandler;
use worker_core::HandlerSpec;
use worker_core::{Disposition, InboundMessage};

use crate::batch::Batching;
use crate::convert;
use crate::deaths;
use crate::error::WorkerError;
use crate::partition;
use crate::publisher::Publisher;
use crate::settle::{self, Settled};
use crate::topology::QueueNames;

/// Everything one handler's deliveries need.
pub(crate) struct HandlerRunner {
    pub(crate) health: Arc<worker_core::telemetry::health::Health>,
    pub(crate) handler: Arc<dyn ErasedHandler>,
    pub(crate) spec: HandlerSpec,
    pub(crate) names: QueueNames,
    pub(crate) runtime: Runtime,
    pub(crate) publisher: Arc<Publisher>,
    /// How the work queue's deliveries are grouped into transactions.
    pub(crate) batching: Batching,
}

/// Signals shared by the consumers of one worker.
#[derive(Clone)]
pub(crate) struct Stop {
    /// Stop taking new deliveries.
    pub(crate) consuming: CancellationToken,
    /// The shutdown deadline passed: give back deliveries still in the handler.
    pub(crate) abandon: CancellationToken,
    /// Every delivery task.
    pub(crate) tasks: TaskTracker,
}

impl HandlerRunner {
    /// Consumes `source` until told to stop (`Ok`) or the channel breaks (`Err`).
    pub(crate) async fn consume(
        self: Arc<Self>,
        channel: Channel,
        consumer_tag: String,
        stop: Stop,
        source: Source,
    ) -> Result<(), WorkerError> {
        let queue = match source {
            Source::Work => self.names.work.clone(),
            Source::DeliveryLimit => self.names.delivery_limit.clone(),
            Source::Partition(k) => self.names.partition(k),
        };
        // A partition queue has one delivery in flight: that is what keeps its entities in order.
        let slots = match source {
            Source::Partition(_) => 1,
            _ => self.spec.concurrency,
        };
        let prefetch = u16::try_from(slots).unwrap_or(u16::MAX);
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(WorkerError::broker(format!("set prefetch on `{queue}`")))?;
        let mut consumer = channel
            .basic_consume(
                queue.as_str().into(),
                consumer_tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(WorkerError::broker(format!("consume `{queue}`")))?;
        let in_flight = Arc::new(Semaphore::new(slots));
        let counts_for_readiness = source == Source::Work;
        if counts_for_readiness {
            self.health.consumer_started();
        }
        let result = if source == Source::Work && self.batching.size > 1 {
            self.consume_batches(&mut consumer, &stop, &in_flight, &queue, self.batching)
                .await
        } else {
            self.consume_deliveries(&mut consumer, &stop, &in_flight, source, &queue)
                .await
        };
        if counts_for_readiness {
            self.health.consumer_stopped();
        }
        result?;
        if let Err(error) = channel
            .basic_cancel(consumer_tag.into(), BasicCancelOptions::default())
            .await
        {
            tracing::warn!(%error, queue, "cancelling the consumer failed");
        }
        Ok(())
    }

    async fn consume_deliveries(
        self: &Arc<Self>,
        consumer: &mut lapin::Consumer,
        stop: &Stop,
        in_flight: &Arc<Semaphore>,
        source: Source,
        queue: &String,
    ) -> Result<(), WorkerError> {
        tracing::info!(
            queue,
            handler = self.spec.name,
            concurrency = self.spec.concurrency,
            "consuming"
        );
        loop {
            let next = tokio::select! {
                biased;
                _ = stop.consuming.cancelled() => break,
                next = consumer.next() => next,
            };
            let delivery = match next {
                Some(Ok(delivery)) => delivery,
                Some(Err(error)) => {
                    return Err(WorkerError::ConsumerLost {
                        queue: queue.clone(),
                        reason: error.to_string(),
                    })
                }
                None if stop.consuming.is_cancelled() => break,
                None => {
                    return Err(WorkerError::ConsumerLost {
                        queue: queue.clone(),
                        reason: "the broker cancelled the consumer".into(),
                    })
                }
            };
            // Never wait for a slot past a stop request: the delivery stays unacked and goes back to
            // the queue when the channel closes.
            let permit = tokio::select! {
                biased;
                _ = stop.consuming.cancelled() => break,
                permit = Arc::clone(in_flight).acquire_owned() => permit.expect("the semaphore is never closed"),
            };
            let acker = delivery.acker.clone();
            let mut message = convert::inbound(delivery);
            if source != Source::DeliveryLimit {
                deaths::forget_delay(&mut message);
            }
            let (abandon, consuming) = (stop.abandon.clone(), stop.consuming.clone());
            // The task is `handle`'s own future (no wrapping block): an async fn keeps its
            // arguments for its whole life, so each should be stored once, and converted already.
            stop.tasks
                .spawn(Arc::clone(self).handle(message, acker, abandon, consuming, source, permit));
        }
        Ok(())
    }

    /// Processes and settles one delivery; `permit` (its slot in flight) is released at the end.
    async fn handle(
        self: Arc<Self>,
        message: InboundMessage,
        acker: Acker,
        abandon: CancellationToken,
        consuming: CancellationToken,
        source: Source,
        permit: OwnedSemaphorePermit,
    ) {
        let _permit = permit;
        let event_id = message.properties.message_id.clone();
        let observer = &self.runtime.observer;
        observer.received(self.spec.name, &message);
        let started = Instant::now();
        let settlement = |outcome, error_kind, acked| Settlement {
            handler: self.spec.name,
            event_id: event_id.as_deref(),
            outcome,
            error_kind,
            acked,
            duration: started.elapsed(),
        };
        if self.spec.partition.is_some() {
            // Boxed, like the other rare paths below: every delivery in flight would otherwise
            // carry room for their futures.
            let forwarded = Box::pin(partition::forward_replay(&self, &acker, &message, source));
            if let Some(settled) = forwarded.await {
                observer.settled(&settlement("forwarded", None, settled == Settled::Acked));
                return;
            }
        }
        let disposition = tokio::select! {
            biased;
            _ = abandon.cancelled() => {
                tracing::warn!(handler = self.spec.name, event_id, "shutdown deadline passed: giving the delivery back unfinished");
                settle::nack(&acker).await;
                observer.settled(&settlement("abandoned", None, false));
                return;
            }
            disposition = async {
                match source {
                    Source::Partition(k) => Box::pin(partition::process_in_place(&self, &message, k, &consuming)).await,
                    _ => self.disposition(&message, source).await,
                }
            } => disposition,
        };
        let done = settlement(disposition.outcome_name(), disposition.error_kind(), false);
        let settled = settle::settle(
            &acker,
            &disposition,
            &self.names,
            &self.spec.retry,
            &self.publisher,
        )
        .await;
        observer.settled(&Settlement {
            acked: settled == Settled::Acked,
            ..done
        });
    }

    /// The pipeline's verdict. While the database cannot even begin a transaction, the delivery
    /// is held (not acked, not requeued: requeueing would count against the delivery limit) and
    /// retried with backoff, so an outage pauses this consumer slot instead of spending attempts.
    pub(crate) async fn disposition(
        &self,
        message: &InboundMessage,
        source: Source,
    ) -> Disposition {
        if source == Source::DeliveryLimit {
            return deaths::delivery_limit_disposition(&self.spec, &self.runtime, message);
        }
        let mut pause = FIRST_DATABASE_PAUSE;
        loop {
            match self
                .handler
                .process(&self.spec, &self.runtime, message)
                .await
            {
                Disposition::GiveBack { reason } => {
                    tracing::warn!(handler = self.spec.name, reason, retry_in = ?pause, "database unavailable: holding the delivery");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_DATABASE_PAUSE);
                }
                disposition => return disposition,
            }
        }
    }
}

/// Which queue a consumer reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// The handler's work queue.
    Work,
    /// Messages the broker dead-lettered past the delivery limit, to be recorded in the DLQ.
    DeliveryLimit,
    /// Partition queue `k` of a partitioned handler (one delivery at a time, retries in place).
    Partition(u16),
}

/// Backoff while the database is unavailable.
pub(crate) const FIRST_DATABASE_PAUSE: Duration = Duration::from_millis(500);
pub(crate) const MAX_DATABASE_PAUSE: Duration = Duration::from_secs(10);
