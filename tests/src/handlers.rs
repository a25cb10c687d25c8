//! Handlers whose behaviour the test event's payload scripts.

use std::time::Duration;

use serde::Deserialize;
use sqlx::PgConnection;
use worker_core::{handler, Context, HandlerError};

/// A scripted event: how the handler should behave on each attempt.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Scripted {
    /// Fail retryably while `attempt <= fail_times`.
    pub fail_times: u32,
    /// Fail as poison.
    pub poison: bool,
    /// Panic while `attempt <= fail_times` instead of returning an error.
    pub panic: bool,
    /// Sleep this long before finishing (to keep a delivery in flight).
    pub sleep_ms: u64,
    /// Fail retryably while the attempts recorded for this event (across replays) number at
    /// most this many: an event that exhausts its retries and then succeeds when replayed.
    pub fail_total: i64,
    /// Abort the whole process (a crash loop: the worker dies on this event every time).
    pub abort: bool,
    /// Dedup handler: write the effect row before failing, so only a rollback removes it.
    pub fail_after_effect: bool,
}

/// Records the attempt in `attempts`, outside the handler's transaction (failed attempts stay).
pub async fn record_attempt(ctx: &Context) -> Result<(), HandlerError> {
    sqlx::query(
        "INSERT INTO attempts (event_id, handler, attempt, trace_id) VALUES ($1, $2, $3, $4)",
    )
    .bind(ctx.event_id())
    .bind(ctx.handler())
    .bind(ctx.attempt() as i32)
    .bind(ctx.trace_id())
    .execute(ctx.pool())
    .await?;
    Ok(())
}

fn scripted_failure(event: &Scripted, ctx: &Context) -> Result<(), HandlerError> {
    if event.abort {
        eprintln!(
            "scripted handler: aborting the process on {}",
            ctx.event_id()
        );
        std::process::abort();
    }
    if event.poison {
        return Err(HandlerError::poison(
            "ScriptedPoison: this event can never succeed",
        ));
    }
    if ctx.attempt() <= event.fail_times {
        if event.panic {
            panic!("scripted panic on attempt {}", ctx.attempt());
        }
        return Err(HandlerError::retryable(format!(
            "ScriptedFailure: attempt {} fails",
            ctx.attempt()
        )));
    }
    Ok(())
}

/// Dedup handler: records every attempt (outside the transaction), then does what the event
/// says; its effect row commits with the dedup row.
#[handler(
    event = "Scripted",
    dedup,
    retry = 3,
    base = "100ms",
    cap = "1s",
    jitter = "50ms"
)]
pub async fn scripted(
    event: Scripted,
    tx: &mut PgConnection,
    ctx: &Context,
) -> Result<(), HandlerError> {
    record_attempt(ctx).await?;
    if event.sleep_ms > 0 {
        tokio::time::sleep(Duration::from_millis(event.sleep_ms)).await;
    }
    if event.fail_after_effect {
        insert_effect(tx, ctx).await?;
    }
    scripted_failure(&event, ctx)?;
    if event.fail_total > 0 {
        let recorded: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM attempts WHERE event_id = $1 AND handler = $2",
        )
        .bind(ctx.event_id())
        .bind(ctx.handler())
        .fetch_one(ctx.pool())
        .await?;
        if recorded <= event.fail_total {
            return Err(HandlerError::retryable(format!(
                "ScriptedFailure: attempt {recorded} of {} fails",
                event.fail_total
            )));
        }
    }
    if !event.fail_after_effect {
        insert_effect(tx, ctx).await?;
    }
    Ok(())
}

/// Records the handler's effect in `effects`, inside its transaction.
pub async fn insert_effect(tx: &mut PgConnection, ctx: &Context) -> Result<(), HandlerError> {
    sqlx::query("INSERT INTO effects (event_id, handler) VALUES ($1, $2)")
        .bind(ctx.event_id())
        .bind(ctx.handler())
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// The same without dedup: the effect is written through the pool, once per successful delivery.
#[handler(
    event = "Scripted",
    name = "scripted-plain",
    retry = 3,
    base = "100ms",
    cap = "1s",
    jitter = "50ms"
)]
pub async fn scripted_plain(event: Scripted, ctx: &Context) -> Result<(), HandlerError> {
    record_attempt(ctx).await?;
    if event.sleep_ms > 0 {
        tokio::time::sleep(Duration::from_millis(event.sleep_ms)).await;
    }
    scripted_failure(&event, ctx)?;
    sqlx::query("INSERT INTO effects (event_id, handler) VALUES ($1, $2)")
        .bind(ctx.event_id())
        .bind(ctx.handler())
        .execute(ctx.pool())
        .await?;
    Ok(())
}
