//! (c) A hand-written lapin + sqlx consumer with dedup: per delivery one transaction with the
//! dedup insert (`ON CONFLICT DO NOTHING RETURNING`) and, for a first delivery, one business
//! insert; commit, then ack. Up to `--in-flight` deliveries at once, each in its own task.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use sqlx::PgPool;
use tokio::sync::Semaphore;

use crate::cli::{Args, Scenario};
use crate::event::BenchEvent;
use crate::namespace::{connect, Namespace};
use crate::recorder::Recorder;
use crate::BoxError;

/// The consumer tag.
const TAG: &str = "worker-bench-hand";

/// Consumes scenario c's queue until `recorder` is complete.
pub async fn run(
    args: &Args,
    namespace: &Namespace,
    recorder: &Arc<Recorder>,
    timeout: Duration,
) -> Result<(), BoxError> {
    let in_flight = usize::from(args.in_flight);
    // One connection per delivery in flight, as many as PostgreSQL comfortably gives a client.
    let pool = namespace.pool(u32::from(args.in_flight).min(64)).await?;
    let connection = connect(&namespace.broker.url, "worker-bench-hand").await?;
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(args.in_flight, BasicQosOptions::default())
        .await?;
    let queue = namespace.names(Scenario::C).work;
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            TAG.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    super::ready();
    let slots = Arc::new(Semaphore::new(in_flight));
    let (loop_recorder, loop_pool) = (Arc::clone(recorder), pool.clone());
    let consuming = tokio::spawn(async move {
        while let Some(delivery) = consumer.next().await {
            let delivery = delivery?;
            loop_recorder.received();
            let permit = Arc::clone(&slots)
                .acquire_owned()
                .await
                .expect("never closed");
            let (recorder, pool) = (Arc::clone(&loop_recorder), loop_pool.clone());
            tokio::spawn(async move {
                let published = super::published_us(&delivery.properties);
                let event_id = delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|id| id.to_string());
                let result = match (event_id, serde_json::from_slice(&delivery.data)) {
                    (Some(id), Ok(event)) => process(&pool, &id, &event).await,
                    _ => Err("no message_id or undecodable payload".into()),
                };
                match result {
                    Ok(()) => {
                        let acked = delivery.acker.ack(BasicAckOptions::default()).await;
                        recorder.done(published, matches!(acked, Ok(true)));
                    }
                    Err(error) => {
                        eprintln!("hand-written consumer: {error}; requeueing");
                        let requeue = BasicNackOptions {
                            requeue: true,
                            multiple: false,
                        };
                        let _ = delivery.acker.nack(requeue).await;
                    }
                }
                drop(permit);
            });
            if loop_recorder.complete() {
                break;
            }
        }
        Ok::<_, lapin::Error>(())
    });
    let finished = recorder.wait(timeout).await;
    consuming.abort();
    if finished {
        super::settle_before_close(&channel, &queue, TAG).await;
    }
    let _ = channel.close(200, "done".into()).await;
    let _ = connection.close(200, "done".into()).await;
    pool.close().await;
    Ok(())
}

async fn process(pool: &PgPool, event_id: &str, event: &BenchEvent) -> Result<(), BoxError> {
    let mut tx = pool.begin().await?;
    let first: Option<i32> = sqlx::query_scalar(
        "INSERT INTO hand_processed_events (handler, event_id) VALUES ('hand', $1) ON CONFLICT DO NOTHING RETURNING 1",
    )
    .bind(event_id)
    .fetch_optional(&mut *tx)
    .await?;
    if first.is_some() {
        sqlx::query(
            "INSERT INTO bench_effects (event_id, scenario, order_id, amount) VALUES ($1, 'c', $2, $3)",
        )
        .bind(event_id)
        .bind(&event.order_id)
        .bind(event.amount)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}
