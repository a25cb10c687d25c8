//! Single deliveries: each delivery is processed and settled in a task of its own, up to the
//! consumer's slots at once. For the work queue of a handler without batches (the pipeline
//! decides) and for the delivery-limit queue (every message becomes a dead-letter record).

use std::time::Instant;

use lapin::message::Delivery;
use worker_core::InboundMessage;

use super::Each;
use crate::ack::Acker;
use crate::convert;
use crate::deaths;
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
    /// A work queue's delivery as usual; a delivery-limit queue's keeps its death headers, which
    /// say why it died.
    fn message(self, delivery: Delivery) -> InboundMessage {
        match self {
            Single::Pipeline => super::work_message(delivery),
            Single::DeliveryLimit => convert::inbound(delivery),
        }
    }

    async fn process(
        self,
        runner: &Runner,
        message: &InboundMessage,
        acker: &Acker,
        started: Instant,
    ) {
        let decide = || async {
            match self {
                Single::Pipeline => runner.verdict(message).await,
                Single::DeliveryLimit => {
                    deaths::delivery_limit_disposition(&runner.spec, &runner.runtime, message)
                }
            }
        };
        runner
            .decide_and_settle(message, acker, started, decide)
            .await;
    }
}
