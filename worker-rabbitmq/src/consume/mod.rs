//! Consuming one queue: the one consume loop (prefetch, `basic.consume`, readiness, the next
//! delivery and its slot, cancelling at the end) and one strategy per kind of queue, chosen once
//! per consumer from its [`Source`]:
//!
//! - [`single`]: one delivery per task, up to the handler's concurrency (the work queue of a
//!   handler without batches, and the delivery-limit queue);
//! - [`batched`]: the deliveries that are ready together in one transaction (a dedup handler's
//!   work queue), acked through the channel's ack ledger;
//! - [`partitioned`]: a partition queue (one delivery in flight, retries in place), and the plain
//!   work queue of a partitioned handler (replays, forwarded to their partition).
//!
//! Every strategy uses the [`Runner`] (slots, the database-hold loop, settling) and none another.

mod batched;
mod partitioned;
mod single;

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::Channel;
use tokio::sync::OwnedSemaphorePermit;
use worker_core::{HandlerSpec, InboundMessage, WorkerConfig};

use crate::ack::Acker;
use crate::convert;
use crate::deaths;
use crate::error::WorkerError;
use crate::runner::Runner;
use crate::settings::BrokerSettings;
use crate::topology::{self, QueueNames};

use batched::{Batched, Batching};
use partitioned::Partitioned;
use single::Single;

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

impl Source {
    /// The queues of `spec` that get a consumer, in the order they are started.
    pub(crate) fn of(broker: &BrokerSettings, spec: &HandlerSpec) -> impl Iterator<Item = Source> {
        let partitions = spec.partition.map_or(0, |p| p.partitions);
        topology::has_delivery_limit_queue(broker)
            .then_some(Source::DeliveryLimit)
            .into_iter()
            .chain((0..partitions).map(Source::Partition))
            .chain(std::iter::once(Source::Work))
    }
}

/// One consumer, decided once from its source: its queue, how many deliveries it has in flight
/// and how it processes them.
#[derive(Debug)]
pub(crate) struct Plan {
    /// The queue it reads.
    pub(crate) queue: String,
    /// Its consumer tag: the consumer name, the handler, the process id and which queue.
    pub(crate) tag: String,
    /// Deliveries in flight (and the channel's prefetch).
    pub(crate) slots: usize,
    /// Whether it counts for `/readyz` (work-queue consumers only).
    readiness: bool,
    strategy: Strategy,
}

/// How a consumer takes its deliveries.
#[derive(Debug, Clone, Copy)]
enum Strategy {
    Single(Single),
    Batched(Batching),
    Partitioned(Partitioned),
}

impl Plan {
    /// The consumer of `source` for the handler `spec` (the only place a [`Source`] is told apart).
    pub(crate) fn new(
        source: Source,
        config: &WorkerConfig,
        spec: &HandlerSpec,
        names: &QueueNames,
    ) -> Self {
        let tag = |queue: &str| {
            format!(
                "{}-{}-{}{queue}",
                config.consumer,
                spec.name,
                std::process::id()
            )
        };
        match source {
            Source::Work => {
                let batching = Batching::of(config, spec);
                Self {
                    queue: names.work.clone(),
                    tag: tag(""),
                    slots: spec.concurrency,
                    readiness: true,
                    strategy: if spec.partition.is_some() {
                        Strategy::Partitioned(Partitioned::Replays)
                    } else if batching.size > 1 {
                        Strategy::Batched(batching)
                    } else {
                        Strategy::Single(Single::Pipeline)
                    },
                }
            }
            Source::DeliveryLimit => Self {
                queue: names.delivery_limit.clone(),
                tag: tag("-delivery-limit"),
                slots: spec.concurrency,
                readiness: false,
                strategy: Strategy::Single(Single::DeliveryLimit),
            },
            // One delivery in flight: that is what keeps the partition's entities in order.
            Source::Partition(k) => Self {
                queue: names.partition(k),
                tag: tag(&format!("-p{k}")),
                slots: 1,
                readiness: false,
                strategy: Strategy::Partitioned(Partitioned::Partition(k)),
            },
        }
    }
}

/// Consumes `runner`'s queue as `plan` says until told to stop (`Ok`) or the channel breaks
/// (`Err`).
pub(crate) async fn consume(
    runner: Arc<Runner>,
    channel: Channel,
    plan: Plan,
) -> Result<(), WorkerError> {
    let queue = runner.queue.as_str();
    let prefetch = u16::try_from(plan.slots).unwrap_or(u16::MAX);
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(WorkerError::broker(format!("set prefetch on `{queue}`")))?;
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            plan.tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(WorkerError::broker(format!("consume `{queue}`")))?;
    tracing::info!(
        queue,
        handler = runner.spec.name,
        in_flight = plan.slots,
        strategy = ?plan.strategy,
        "consuming"
    );
    if plan.readiness {
        runner.health.consumer_started();
    }
    // Shared with the ackers of the deliveries in flight (see [`Acker`]).
    let channel = Arc::new(channel);
    let source = (&runner, &channel, &mut consumer);
    let result = match plan.strategy {
        Strategy::Single(single) => run(source, single).await,
        Strategy::Batched(batching) => {
            let batched = Batched::new(batching, runner.spec.concurrency);
            run(source, batched).await
        }
        Strategy::Partitioned(partitioned) => run(source, partitioned).await,
    };
    if plan.readiness {
        runner.health.consumer_stopped();
    }
    result?;
    if let Err(error) = channel
        .basic_cancel(plan.tag.into(), BasicCancelOptions::default())
        .await
    {
        tracing::warn!(%error, queue, "cancelling the consumer failed");
    }
    Ok(())
}

/// What a strategy does with each delivery the consume loop takes.
trait Take: Send {
    /// Takes `delivery` of `channel`, which holds `slot` (one of the runner's slots in flight):
    /// spawns its processing on the runner's task tracker. A strategy that groups deliveries may
    /// read more of the ready ones from `consumer` first; it returns `Some` when the stream ended
    /// meanwhile (`Ok` when asked to stop).
    fn take(
        &mut self,
        runner: &Arc<Runner>,
        channel: &Arc<Channel>,
        delivery: Delivery,
        slot: OwnedSemaphorePermit,
        consumer: &mut lapin::Consumer,
    ) -> impl Future<Output = Option<Result<(), WorkerError>>> + Send;
}

/// A strategy that processes each delivery in a task of its own (single and partitioned).
trait Each: Copy + Send + Sync + 'static {
    /// The delivery as this strategy's pipeline sees it (see [`work_message`]).
    fn message(self, delivery: Delivery) -> InboundMessage {
        work_message(delivery)
    }

    /// Decides and settles one delivery, received at `started`.
    fn process(
        self,
        runner: &Runner,
        message: &InboundMessage,
        acker: &Acker,
        started: Instant,
    ) -> impl Future<Output = ()> + Send;
}

impl<S: Each> Take for S {
    async fn take(
        &mut self,
        runner: &Arc<Runner>,
        channel: &Arc<Channel>,
        delivery: Delivery,
        slot: OwnedSemaphorePermit,
        _consumer: &mut lapin::Consumer,
    ) -> Option<Result<(), WorkerError>> {
        let acker = Acker::new(Arc::clone(channel), delivery.delivery_tag);
        let message = self.message(delivery);
        // The task is `handle`'s own future (no wrapping block): an async fn keeps its arguments
        // for its whole life, so each should be stored once, and converted already.
        let task = handle(*self, Arc::clone(runner), message, acker, slot);
        runner.stop.tasks.spawn(task);
        None
    }
}

/// The task of one delivery: processes and settles it; `slot` is released at the end.
async fn handle<S: Each>(
    strategy: S,
    runner: Arc<Runner>,
    message: InboundMessage,
    acker: Acker,
    slot: OwnedSemaphorePermit,
) {
    let _slot = slot;
    let _taken = runner.received(&message);
    let started = Instant::now();
    strategy.process(&runner, &message, &acker, started).await;
}

/// A delivery of a work or partition queue as the pipeline sees it: converted, and without the
/// delay queue's death headers a retry copy carries (see [`deaths::forget_delay`]).
fn work_message(delivery: Delivery) -> InboundMessage {
    let mut message = convert::inbound(delivery);
    deaths::forget_delay(&mut message);
    message
}

/// The consume loop: the next delivery, a free slot for it, then the strategy's turn.
async fn run(
    (runner, channel, consumer): (&Arc<Runner>, &Arc<Channel>, &mut lapin::Consumer),
    mut strategy: impl Take,
) -> Result<(), WorkerError> {
    loop {
        let Some(delivery) = runner.next(consumer).await? else {
            return Ok(());
        };
        let Some(slot) = runner.slot().await else {
            return Ok(());
        };
        if let Some(end) = strategy
            .take(runner, channel, delivery, slot, consumer)
            .await
        {
            return end;
        }
    }
}
