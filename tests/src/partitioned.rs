//! A partitioned handler for the ordering tests: logs every call and, in its dedup transaction,
//! every applied event, with the worker process that ran it.

use std::time::Duration;

use serde::Deserialize;
use sqlx::PgConnection;
use worker_core::{handler, Context, HandlerError};

/// One event of an entity: its key, its per-key sequence number and how it should behave.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Sequenced {
    /// The entity (routed by the `x-partition-key` header, which copies it).
    pub key: String,
    /// Per-key sequence number, in publish order.
    pub seq: i32,
    /// Fail retryably while `attempt <= fail_times`.
    pub fail_times: u32,
    /// Fail as poison.
    pub poison: bool,
    /// Fail as poison until the test inserts `(key, seq)` into `partition_fixed`.
    pub poison_until_fixed: bool,
    /// Sleep this long before finishing.
    pub sleep_ms: u64,
}

/// The worker label written to the log: `PARTITION_WORKER`, else the process id.
fn worker() -> String {
    std::env::var("PARTITION_WORKER").unwrap_or_else(|_| std::process::id().to_string())
}

/// Partitioned over 8 queues by `key`; 4 attempts in total.
#[handler(
    event = "Sequenced",
    dedup,
    retry = 4,
    partition_key = "key",
    partitions = 8
)]
pub async fn sequenced(
    event: Sequenced,
    tx: &mut PgConnection,
    ctx: &Context,
) -> Result<(), HandlerError> {
    sqlx::query("INSERT INTO partition_calls (key, seq, attempt, worker) VALUES ($1, $2, $3, $4)")
        .bind(&event.key)
        .bind(event.seq)
        .bind(ctx.attempt() as i32)
        .bind(worker())
        .execute(ctx.pool())
        .await?;
    if event.sleep_ms > 0 {
        tokio::time::sleep(Duration::from_millis(event.sleep_ms)).await;
    }
    if event.poison {
        return Err(HandlerError::poison(
            "ScriptedPoison: this event can never succeed",
        ));
    }
    if event.poison_until_fixed {
        let fixed: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM partition_fixed WHERE key = $1 AND seq = $2)",
        )
        .bind(&event.key)
        .bind(event.seq)
        .fetch_one(ctx.pool())
        .await?;
        if !fixed {
            return Err(HandlerError::poison(format!(
                "NotFixedYet: {} seq {} fails until the test fixes it",
                event.key, event.seq
            )));
        }
    }
    if ctx.attempt() <= event.fail_times {
        return Err(HandlerError::retryable(format!(
            "ScriptedFailure: attempt {} fails",
            ctx.attempt()
        )));
    }
    sqlx::query("INSERT INTO partition_applied (key, seq, worker) VALUES ($1, $2, $3)")
        .bind(&event.key)
        .bind(event.seq)
        .bind(worker())
        .execute(&mut *tx)
        .await?;
    Ok(())
}
