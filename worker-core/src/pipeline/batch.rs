//! Batched dedup transactions: several ready deliveries of one dedup handler processed in one
//! Postgres transaction, so that a backlog costs one commit per batch instead of one per event.
//!
//! The batch claims all its event ids with one statement, then runs each handler inside its own
//! savepoint: a failing handler rolls back only its own writes (and its claim) and goes its own
//! way (retry copy or dead letter), the others commit together. When anything at the batch level
//! fails (a savepoint, the claim, the commit), the whole transaction is rolled back and every
//! delivery is processed again on its own, so a batch never decides more than a single delivery
//! would. Duplicates inside one batch run the handler once.
//!
//! Savepoints that write become subtransactions; Postgres keeps up to 64 per transaction in its
//! fast path, so batches are best kept at or below that.

use std::collections::HashSet;

use sqlx::PgConnection;
use tracing::Instrument;

use super::transaction::{self, Outcome};
use super::{conclude, decode, finish, open, prepare, Prepared, Runtime};
use crate::context::Context;
use crate::handler::{Handler, HandlerSpec};
use crate::message::inbound::InboundMessage;
use crate::pipeline::disposition::Disposition;
use crate::pipeline::envelope::Envelope;

/// A delivery of the batch that passed the checks and awaits its handler.
struct Member<E> {
    /// Its index in the batch.
    index: usize,
    envelope: Envelope,
    span: tracing::Span,
    ctx: Context,
    event: Option<E>,
}

/// Processes `messages` (deliveries of one dedup handler) in one transaction; returns one
/// disposition per message, in order. Deliveries that fail the checks needing no database
/// (size, id, payload) are settled on their own; a batch of one is an ordinary delivery.
pub async fn process_batch<H: Handler>(
    handler: &H,
    spec: &HandlerSpec,
    runtime: &Runtime,
    messages: &[InboundMessage],
) -> Vec<Disposition> {
    let mut dispositions: Vec<Option<Disposition>> = vec![None; messages.len()];
    let mut members = Vec::with_capacity(messages.len());
    for (index, message) in messages.iter().enumerate() {
        let (envelope, span) = open(spec, runtime, message);
        match span.in_scope(|| prepare::<H>(spec, runtime, message, &envelope)) {
            Prepared::Settled(disposition) => {
                dispositions[index] = Some(finish(&span, *disposition))
            }
            Prepared::Ready { event, ctx } => members.push(Member {
                index,
                envelope,
                span,
                ctx,
                event: Some(event),
            }),
        }
    }
    let outcomes = if spec.dedup && members.len() > 1 {
        match in_one_transaction(handler, spec, runtime, &mut members).await {
            Ok(outcomes) => outcomes,
            Err(error) => {
                tracing::warn!(handler = spec.name, %error, size = members.len(), "the batch transaction failed; processing its deliveries one by one");
                one_by_one(handler, spec, runtime, messages, &mut members).await
            }
        }
    } else {
        one_by_one(handler, spec, runtime, messages, &mut members).await
    };
    for (member, outcome) in members.iter().zip(outcomes) {
        let message = &messages[member.index];
        let disposition = member
            .span
            .in_scope(|| conclude(spec, runtime, message, &member.envelope, outcome));
        dispositions[member.index] = Some(finish(&member.span, disposition));
    }
    dispositions
        .into_iter()
        .map(|d| d.expect("every delivery of the batch has a disposition"))
        .collect()
}

/// Each member in its own transaction (the event decoded again where the batch used it up).
async fn one_by_one<H: Handler>(
    handler: &H,
    spec: &HandlerSpec,
    runtime: &Runtime,
    messages: &[InboundMessage],
    members: &mut [Member<H::Event>],
) -> Vec<Outcome> {
    let mut outcomes = Vec::with_capacity(members.len());
    for member in members.iter_mut() {
        let event = match member.event.take() {
            Some(event) => event,
            None => {
                let message = &messages[member.index];
                match decode::event(
                    &message.body,
                    &message.properties.headers,
                    &member.envelope.event_type,
                    spec.version,
                    &runtime.upcasters,
                ) {
                    Ok(event) => event,
                    // It decoded a moment ago; only an upcaster that changed its mind gets here.
                    Err(problem) => {
                        outcomes.push(Outcome::Failed(crate::HandlerError::poison(
                            problem.to_string(),
                        )));
                        continue;
                    }
                }
            }
        };
        let outcome = transaction::run(handler, spec, runtime, event, &member.ctx)
            .instrument(member.span.clone())
            .await;
        outcomes.push(outcome);
    }
    outcomes
}

/// The savepoint each member's handler runs in.
const SAVEPOINT: &str = "SAVEPOINT worker_batch_event";
const NEXT_SAVEPOINT: &str = "RELEASE SAVEPOINT worker_batch_event; SAVEPOINT worker_batch_event";
const ROLLBACK_TO_SAVEPOINT: &str = "ROLLBACK TO SAVEPOINT worker_batch_event";

/// Claims every member, runs each handler in a savepoint, commits once. `Err`: the batch as a
/// whole failed and was rolled back; nothing of it is durable.
async fn in_one_transaction<H: Handler>(
    handler: &H,
    spec: &HandlerSpec,
    runtime: &Runtime,
    members: &mut [Member<H::Event>],
) -> Result<Vec<Outcome>, sqlx::Error> {
    let begun = match &runtime.pool {
        Some(pool) => pool.begin().await.map_err(|error| error.to_string()),
        None => Err(transaction::NO_POOL.to_owned()),
    };
    let mut tx = match begun {
        Ok(tx) => tx,
        Err(error) => {
            let reason = format!("cannot begin the dedup transaction: {error}");
            return Ok(members
                .iter()
                .map(|_| Outcome::DatabaseUnavailable(reason.clone()))
                .collect());
        }
    };
    let ids: Vec<&str> = members.iter().map(|m| m.ctx.event_id()).collect();
    let claimed = runtime.dedup.claim_all(&mut tx, spec.name, &ids).await?;
    let mut seen = HashSet::with_capacity(members.len());
    let mut in_savepoint = false;
    let mut outcomes = Vec::with_capacity(members.len());
    for member in members.iter_mut() {
        let id = member.ctx.event_id();
        if !claimed.contains(id) || !seen.insert(id.to_owned()) {
            outcomes.push(Outcome::Duplicate);
            continue;
        }
        let savepoint = if in_savepoint {
            NEXT_SAVEPOINT
        } else {
            SAVEPOINT
        };
        execute(&mut tx, savepoint).await?;
        in_savepoint = true;
        let event = member.event.take().expect("each member runs once");
        let result = transaction::call(handler, event, &member.ctx, Some(&mut *tx))
            .instrument(member.span.clone())
            .await;
        match result {
            Ok(()) => outcomes.push(Outcome::Done),
            Err(error) => {
                undo(&mut tx, runtime, spec, id).await?;
                outcomes.push(Outcome::Failed(error));
            }
        }
    }
    tx.commit().await?;
    let committed: Vec<&str> = members
        .iter()
        .zip(&outcomes)
        .filter(|(_, outcome)| matches!(outcome, Outcome::Done))
        .map(|(member, _)| member.ctx.event_id())
        .collect();
    runtime.observer.batch_committed(spec.name, members.len());
    for id in committed {
        runtime.observer.committed(spec.name, id);
    }
    Ok(outcomes)
}

/// Rolls back a failed member's writes and takes back its claim, so a retry can claim it again.
async fn undo(
    tx: &mut PgConnection,
    runtime: &Runtime,
    spec: &HandlerSpec,
    event_id: &str,
) -> Result<(), sqlx::Error> {
    execute(tx, ROLLBACK_TO_SAVEPOINT).await?;
    runtime.dedup.unclaim(tx, spec.name, event_id).await
}

/// Runs a fixed statement (or several) with the simple query protocol: one round trip.
fn execute<'c>(
    conn: &'c mut PgConnection,
    sql: &'static str,
) -> crate::handler::BoxFuture<'c, Result<(), sqlx::Error>> {
    // A `&str` without arguments goes through the simple query protocol, which takes several
    // statements at once.
    Box::pin(async move { sqlx::Executor::execute(conn, sql).await.map(|_| ()) })
}
