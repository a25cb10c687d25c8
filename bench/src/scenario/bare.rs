//! (a) A bare lapin consumer: decode + ack per message; the loop runs in a spawned task on the
//! multi-thread runtime (a loop on the `#[tokio::main]` thread understates lapin).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;

use crate::cli::{Args, Scenario};
use crate::event::BenchEvent;
use crate::namespace::{connect, Namespace};
use crate::recorder::Recorder;
use crate::BoxError;

/// The consumer tag.
const TAG: &str = "worker-bench-bare";

/// Consumes scenario a's queue until `recorder` is complete.
pub async fn run(
    args: &Args,
    namespace: &Namespace,
    recorder: &Arc<Recorder>,
    timeout: Duration,
) -> Result<(), BoxError> {
    let connection = connect(&namespace.broker.url, "worker-bench-bare").await?;
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(args.in_flight, BasicQosOptions::default())
        .await?;
    let queue = namespace.names(Scenario::A).work;
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            TAG.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    super::ready();
    let loop_recorder = Arc::clone(recorder);
    let consuming = tokio::spawn(async move {
        while let Some(delivery) = consumer.next().await {
            let delivery = delivery?;
            loop_recorder.received();
            let decoded = serde_json::from_slice::<BenchEvent>(&delivery.data);
            let published = super::published_us(&delivery.properties);
            delivery.acker.ack(BasicAckOptions::default()).await?;
            loop_recorder.done(published, decoded.is_ok());
            if loop_recorder.complete() {
                break;
            }
        }
        Ok::<_, lapin::Error>(())
    });
    let finished = recorder.wait(timeout).await;
    if !finished {
        consuming.abort();
    } else {
        consuming.await??;
        super::settle_before_close(&channel, &queue, TAG).await;
    }
    let _ = channel.close(200, "done".into()).await;
    let _ = connection.close(200, "done".into()).await;
    Ok(())
}
