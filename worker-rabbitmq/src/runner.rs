//! The runner of one consumer: everything its deliveries need (the handler with its effective
//! spec and queue names, the pipeline's runtime, the session's publisher, the worker's health and
//! stop signals, the consumer's slots in flight), and what every consume strategy of
//! `consume` shares: the next delivery of the stream, the wait for a free slot,
//! the one loop that holds deliveries through a database outage, the observer's calls, and the
//! settling of one delivery.
//!
//! The runner knows nothing of the strategies; they use it.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::message::Delivery;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use worker_core::transport::breaker::{Admission, Breaker, Verdict as BreakerVerdict};
use worker_core::transport::pipeline::Disposition;
use worker_core::transport::pipeline::Runtime;
use worker_core::transport::registry::ErasedHandler;
use worker_core::transport::telemetry::{Health, Taken, Unsettled};
use worker_core::Settlement;
use worker_core::{ErrorKind, HandlerSpec, InboundMessage};

use crate::ack::{self, Acker};
use crate::error::WorkerError;
use crate::publisher::Publisher;
use crate::settle::{self, Outlets, Settled};
use crate::topology::QueueNames;

/// Backoff while the database is unavailable.
const FIRST_DATABASE_PAUSE: Duration = Duration::from_millis(500);
const MAX_DATABASE_PAUSE: Duration = Duration::from_secs(10);

/// The event id of a delivery, as the circuit breaker tells events apart.
fn event_id(message: &InboundMessage) -> &str {
    message.properties.message_id.as_deref().unwrap_or("")
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

impl std::fmt::Debug for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stop").finish_non_exhaustive()
    }
}

impl Stop {
    /// A permit of `slots`, or `None` when asked to stop first. Never waits for a slot past a
    /// stop request: the delivery at hand stays unacked and goes back to the queue when the
    /// channel closes.
    pub(crate) async fn slot(&self, slots: &Arc<Semaphore>) -> Option<OwnedSemaphorePermit> {
        tokio::select! {
            biased;
            _ = self.consuming.cancelled() => None,
            permit = Arc::clone(slots).acquire_owned() => Some(permit.expect("the semaphore is never closed")),
        }
    }
}

/// Everything the deliveries of one consumer need (see the module documentation).
pub(crate) struct Runner {
    pub(crate) handler: Arc<dyn ErasedHandler>,
    pub(crate) spec: HandlerSpec,
    pub(crate) names: QueueNames,
    pub(crate) runtime: Runtime,
    pub(crate) publisher: Arc<Publisher>,
    pub(crate) health: Arc<Health>,
    pub(crate) stop: Stop,
    /// The queue the consumer reads.
    pub(crate) queue: String,
    /// One permit per delivery in flight (see [`Runner::slot`]).
    pub(crate) slots: Arc<Semaphore>,
    /// The handler's circuit breaker, shared by its consumers (see [`Runner::admit`]).
    pub(crate) breaker: Arc<Breaker>,
    /// The handler's deliveries taken and not settled (see [`Runner::received`]).
    pub(crate) unsettled: Arc<Unsettled>,
}

impl Runner {
    /// The next delivery of the stream: `Ok(None)` once asked to stop, `Err` when the stream
    /// broke.
    pub(crate) async fn next(
        &self,
        consumer: &mut lapin::Consumer,
    ) -> Result<Option<Delivery>, WorkerError> {
        let item = tokio::select! {
            biased;
            _ = self.stop.consuming.cancelled() => return Ok(None),
            item = consumer.next() => item,
        };
        self.delivery(item)
    }

    /// What an item of the consumer stream means: a delivery, the end asked for (`Ok(None)`), or
    /// a lost consumer.
    pub(crate) fn delivery(
        &self,
        item: Option<Result<Delivery, lapin::Error>>,
    ) -> Result<Option<Delivery>, WorkerError> {
        match item {
            Some(Ok(delivery)) => Ok(Some(delivery)),
            Some(Err(error)) => Err(WorkerError::ConsumerLost {
                queue: self.queue.clone(),
                reason: error.to_string(),
            }),
            None if self.stop.consuming.is_cancelled() => Ok(None),
            None => Err(WorkerError::ConsumerLost {
                queue: self.queue.clone(),
                reason: "the broker cancelled the consumer".into(),
            }),
        }
    }

    /// A slot for one more delivery in flight, or `None` when asked to stop first.
    pub(crate) async fn slot(&self) -> Option<OwnedSemaphorePermit> {
        self.stop.slot(&self.slots).await
    }

    /// Waits until the handler's circuit breaker lets a delivery through: `None` when asked to
    /// stop first (the delivery then goes back unprocessed, without spending an attempt).
    async fn admit(&self) -> Option<Admission> {
        tokio::select! {
            biased;
            admission = self.breaker.admit() => Some(admission),
            _ = self.stop.consuming.cancelled() => None,
        }
    }

    /// What a disposition tells the circuit breaker about the handler's dependencies: only a
    /// retryable failure counts against them; poison, duplicates and held deliveries say nothing.
    fn breaker_verdict(disposition: &Disposition) -> BreakerVerdict {
        match disposition {
            Disposition::Processed => BreakerVerdict::Success,
            Disposition::Retry { .. } => BreakerVerdict::Failure,
            Disposition::DeadLetter { .. }
                if disposition.error_kind() == Some(ErrorKind::Retryable) =>
            {
                BreakerVerdict::Failure
            }
            _ => BreakerVerdict::Neutral,
        }
    }

    /// The delivery given back because the worker stops while the breaker holds it.
    fn stopped_at_the_breaker() -> Disposition {
        Disposition::GiveBack {
            reason: "shutdown while the circuit breaker held the delivery".into(),
        }
    }

    /// The pipeline's verdict on one delivery, once the circuit breaker lets it through, held
    /// through a database outage (see [`Runner::hold`]).
    pub(crate) async fn verdict(&self, message: &InboundMessage) -> Disposition {
        let Some(admission) = self.admit().await else {
            return Self::stopped_at_the_breaker();
        };
        let process = || self.handler.process(&self.spec, &self.runtime, message);
        let disposition = self
            .hold(
                |_| process(),
                |disposition: &Disposition| match disposition {
                    Disposition::GiveBack { reason } => Some((reason.as_str(), 1)),
                    _ => None,
                },
            )
            .await;
        self.breaker.record(
            admission,
            Self::breaker_verdict(&disposition),
            event_id(message),
        );
        disposition
    }

    /// The pipeline's verdicts on a batch, in order, once the circuit breaker lets them through:
    /// all at once while it is closed; while it is open, the first as the probe and the rest
    /// after it (so a failed probe spends one attempt, not a batch's).
    pub(crate) async fn verdicts(&self, messages: &[InboundMessage]) -> Vec<Disposition> {
        let mut dispositions = Vec::with_capacity(messages.len());
        while dispositions.len() < messages.len() {
            let rest = &messages[dispositions.len()..];
            let Some(admission) = self.admit().await else {
                dispositions.extend(rest.iter().map(|_| Self::stopped_at_the_breaker()));
                break;
            };
            let part = match admission {
                Admission::Normal => rest,
                Admission::Probe => &rest[..1],
            };
            let verdicts = self.batch_verdicts(part).await;
            for (disposition, message) in verdicts.iter().zip(part) {
                self.breaker.record(
                    admission,
                    Self::breaker_verdict(disposition),
                    event_id(message),
                );
            }
            dispositions.extend(verdicts);
        }
        dispositions
    }

    /// The pipeline's verdicts on a batch (one transaction for a dedup handler), in order. The
    /// deliveries held through a database outage are tried again on their own (see
    /// [`Runner::hold`]).
    async fn batch_verdicts(&self, messages: &[InboundMessage]) -> Vec<Disposition> {
        let (handler, spec, runtime) = (&self.handler, &self.spec, &self.runtime);
        self.hold(
            |previous: Option<Vec<Disposition>>| async move {
                let Some(mut dispositions) = previous else {
                    return handler.process_batch(spec, runtime, messages).await;
                };
                let held: Vec<usize> = (0..dispositions.len())
                    .filter(|&i| matches!(dispositions[i], Disposition::GiveBack { .. }))
                    .collect();
                let again: Vec<InboundMessage> =
                    held.iter().map(|&i| messages[i].clone()).collect();
                let retried = handler.process_batch(spec, runtime, &again).await;
                for (i, disposition) in held.into_iter().zip(retried) {
                    dispositions[i] = disposition;
                }
                dispositions
            },
            |dispositions: &Vec<Disposition>| {
                let mut held = dispositions.iter().filter_map(|d| match d {
                    Disposition::GiveBack { reason } => Some(reason.as_str()),
                    _ => None,
                });
                let reason = held.next()?;
                Some((reason, 1 + held.count()))
            },
        )
        .await
    }

    /// The one database-hold loop: runs `attempt(None)`, then, while `held` finds deliveries
    /// whose transaction could not even begin (the first one's reason and how many), sleeps with
    /// backoff and runs `attempt(Some(previous))` again. Held deliveries are neither acked nor
    /// requeued (requeueing would count against the delivery limit): an outage pauses this
    /// consumer's slots instead of spending attempts.
    async fn hold<T, A, F>(&self, mut attempt: A, held: impl Fn(&T) -> Option<(&str, usize)>) -> T
    where
        A: FnMut(Option<T>) -> F,
        F: Future<Output = T>,
    {
        let mut outcome = attempt(None).await;
        let mut pause = FIRST_DATABASE_PAUSE;
        loop {
            let Some((reason, count)) = held(&outcome) else {
                return outcome;
            };
            tracing::warn!(handler = self.spec.name, reason, held = count, retry_in = ?pause, "database unavailable: holding the deliveries");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_DATABASE_PAUSE);
            outcome = attempt(Some(outcome)).await;
        }
    }

    /// Runs `decide()` unless the shutdown deadline passes first (the delivery then goes back
    /// unfinished), then settles the disposition (ack only once durable) and reports it;
    /// `started` is when the delivery was received. `decide` makes its future here: a future
    /// passed in would be stored twice in every delivery's task (the caller's and this one's).
    pub(crate) async fn decide_and_settle<F>(
        &self,
        message: &InboundMessage,
        acker: &Acker,
        started: Instant,
        decide: impl FnOnce() -> F,
    ) where
        F: Future<Output = Disposition>,
    {
        let disposition = tokio::select! {
            biased;
            _ = self.stop.abandon.cancelled() => {
                tracing::warn!(handler = self.spec.name, event_id = message.properties.message_id, "shutdown deadline passed: giving the delivery back unfinished");
                ack::nack(acker).await;
                self.settled(message, "abandoned", None, false, started.elapsed());
                return;
            }
            disposition = decide() => disposition,
        };
        // The pipeline's time, without settling.
        let duration = started.elapsed();
        let settled = settle::settle(acker, &disposition, self.outlets()).await;
        self.settled(
            message,
            disposition.outcome_name(),
            disposition.error_kind(),
            settled == Settled::Acked,
            duration,
        );
    }

    /// Where this handler's outcomes go.
    pub(crate) fn outlets(&self) -> Outlets<'_> {
        Outlets {
            names: &self.names,
            retry: &self.spec.retry,
            publisher: &self.publisher,
        }
    }

    /// Tells the observer a delivery arrived; it counts for the handler's lag until the guard is
    /// dropped (once it is settled).
    pub(crate) fn received(&self, message: &InboundMessage) -> Taken {
        self.runtime.observer.received(self.spec.name, message);
        self.unsettled.taken(message)
    }

    /// Tells the observer how a delivery ended (`duration`: the pipeline's time).
    pub(crate) fn settled(
        &self,
        message: &InboundMessage,
        outcome: &'static str,
        error_kind: Option<ErrorKind>,
        acked: bool,
        duration: Duration,
    ) {
        self.runtime.observer.settled(&Settlement {
            handler: self.spec.name,
            event_id: message.properties.message_id.as_deref(),
            outcome,
            error_kind,
            acked,
            duration,
        });
    }
}
