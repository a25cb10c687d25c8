//! Single deliveries: each delivery is processed and settled in a task of its own, up to the
//! consumer's slots at once. For the work queue of a handler without batches (the pipeline
//! decides) and for the delivery-limit queue (every message becomes a dead-letter record).

use std::sync::Arc;
use std::time::Instant;

use lapin::acker::Acker;
use tokio::sync::OwnedSemaphorePermit;
use worker_core::pipeline::delivery_limit;
use worker_core::InboundMessage;

use super::Each;
use crate::runner::Runner;

/// What decides a single delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Single {
    /// A work queue: the pipeline, held through a database outage.
    Pipeline,
    /// The delivery-limit queue: the message was redelivered past the limit (a crash loop) and
    /// is recorded as a dead letter.
    DeliveryLimit,
}

impl Each for Single {
    async fn handle(
        self,
        runner: Arc<Runner>,
        message: InboundMessage,
        acker: Acker,
        slot: OwnedSemaphorePermit,
    ) {
        let _slot = slot;
        runner.received(&message);
        let started = Instant::now();
        let decide = || async {
            match self {
                Single::Pipeline => runner.verdict(&message).await,
                Single::DeliveryLimit => {
                    delivery_limit::delivery_limit_exceeded(&runner.spec, &runner.runtime, &message)
                }
            }
        };
        runner
            .decide_and_settle(&message, &acker, started, decide)
            .await;
    }
}
