//! The dedup transaction: claim `(handler, event_id)`, run the handler on the same connection,
//! commit. The handler's writes and the dedup row commit together or not at all.

use std::any::Any;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use sqlx::PgConnection;

use super::Runtime;
use crate::context::Context;
use crate::handler::error::HandlerError;
use crate::handler::{Handler, HandlerSpec};

/// Why a dedup handler could not begin its transaction in a runtime without a pool.
pub(crate) const NO_POOL: &str =
    "no database pool: a dedup handler needs one (give the test harness `.pool(pool)`)";

/// What happened in the transaction step.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Handler succeeded; for a dedup handler its transaction is committed.
    Done,
    /// The dedup row existed: the handler did not run.
    Duplicate,
    /// No transaction could be started: the database is unavailable. Not the message's fault.
    DatabaseUnavailable(String),
    /// The handler (or the dedup insert, or the commit) failed; everything was rolled back.
    Failed(HandlerError),
}

/// Runs the handler, inside the dedup transaction when the handler has `dedup`.
pub(crate) async fn run<H: Handler>(
    handler: &H,
    spec: &HandlerSpec,
    runtime: &Runtime,
    event: H::Event,
    ctx: &Context,
) -> Outcome {
    if !spec.dedup {
        return match call(handler, event, ctx, None).await {
            Ok(()) => Outcome::Done,
            Err(error) => Outcome::Failed(error),
        };
    }
    let Some(pool) = &runtime.pool else {
        return Outcome::DatabaseUnavailable(NO_POOL.into());
    };
    let mut tx = match pool.begin().await {
        Ok(tx) => tx,
        Err(error) => {
            return Outcome::DatabaseUnavailable(format!(
                "cannot begin the dedup transaction: {error}"
            ))
        }
    };
    match runtime
        .dedup
        .claim(&mut tx, spec.name, ctx.event_id())
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            let _ = tx.rollback().await;
            return Outcome::Duplicate;
        }
        Err(error) => return Outcome::Failed(HandlerError::from(error)),
    }
    if let Err(error) = call(handler, event, ctx, Some(&mut tx)).await {
        // Dropping the transaction would roll back too; doing it here returns the connection clean.
        let _ = tx.rollback().await;
        return Outcome::Failed(error);
    }
    match tx.commit().await {
        Ok(()) => {
            runtime.observer.batch_committed(spec.name, 1);
            runtime.observer.committed(spec.name, ctx.event_id());
            Outcome::Done
        }
        Err(error) => Outcome::Failed(HandlerError::from(error)),
    }
}

/// Calls the handler, turning a panic into a retryable failure (`panic: <message>`).
pub(crate) async fn call<H: Handler>(
    handler: &H,
    event: H::Event,
    ctx: &Context,
    tx: Option<&mut PgConnection>,
) -> Result<(), HandlerError> {
    match AssertUnwindSafe(handler.call(event, ctx, tx))
        .catch_unwind()
        .await
    {
        Ok(result) => result,
        Err(panic) => Err(HandlerError::retryable(format!(
            "panic: {}",
            panic_message(panic.as_ref())
        ))),
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> &str {
    if let Some(s) = panic.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s
    } else {
        "a non-string panic payload"
    }
}
