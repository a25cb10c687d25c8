//! `dlq replay`: republishes the original message byte for byte to the handler's queue, with
//! attempts reset and the trace continued, removes the entry only after the confirm, and the
//! replayed event is processed exactly once (replaying again changes nothing).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use lapin::options::{BasicGetOptions, BasicPublishOptions, BasicRejectOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::BasicProperties;
use sqlx::PgConnection;
use worker_core::{handler, Context, HandlerError};
use worker_rabbitmq::cli::CliOutput;
use worker_rabbitmq::{Worker, WorkerBuilder};
use worker_tests::{eventually, text, TestEnv};

/// The downstream dependency: broken until the test "fixes" it.
static BROKEN: AtomicBool = AtomicBool::new(true);
/// `(event id, attempt, trace id)` of every attempt.
static SEEN: Mutex<Vec<(String, u32, String)>> = Mutex::new(Vec::new());

#[handler(
    event = "Fixable",
    dedup,
    retry = 2,
    base = "100ms",
    cap = "200ms",
    jitter = "10ms"
)]
async fn fixable(
    _event: serde_json::Value,
    tx: &mut PgConnection,
    ctx: &Context,
) -> Result<(), HandlerError> {
    SEEN.lock().expect("lock").push((
        ctx.event_id().to_owned(),
        ctx.attempt(),
        ctx.trace_id().to_owned(),
    ));
    if BROKEN.load(Ordering::SeqCst) {
        return Err(HandlerError::retryable("DownstreamUnavailable: 503"));
    }
    sqlx::query("INSERT INTO effects (event_id, handler) VALUES ($1, $2)")
        .bind(ctx.event_id())
        .bind(ctx.handler())
        .execute(&mut *tx)
        .await?;
    Ok(())
}

fn builder(env: &TestEnv) -> WorkerBuilder {
    Worker::builder()
        .handler(fixable)
        .migrations(TestEnv::migrator())
        .settings(env.settings())
}

async fn cli(env: &TestEnv, args: &[&str]) -> CliOutput {
    let args = std::iter::once("worker").chain(args.iter().copied());
    builder(env).run_with_args(args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_is_byte_identical_continues_the_trace_and_processes_once() {
    let env = TestEnv::new().await;
    let work = env.queue("fixable");
    let dlq = format!("{work}.dlq");
    // An odd but valid body (spacing, non-ASCII) and typed headers: all must survive.
    let body = "{ \"order\" :  \"ord_ü\",\n\t\"amount\": 4900.0 }"
        .as_bytes()
        .to_vec();
    let mut headers = FieldTable::default();
    headers.insert(ShortString::from("tenant"), text("acme"));
    headers.insert(ShortString::from("priority-class"), AMQPValue::LongInt(5));
    let properties = BasicProperties::default()
        .with_message_id(ShortString::from("evt_fix"))
        .with_correlation_id(ShortString::from("corr-9"))
        .with_app_id(ShortString::from("checkout"))
        .with_timestamp(1_700_000_000)
        .with_headers(headers.clone());

    let worker = builder(&env).start().await.expect("worker starts");
    env.publish("Fixable", &body, properties).await;
    eventually("dead-lettered after 2 attempts", || async {
        env.depth(&dlq).await == 1
    })
    .await;
    worker.shutdown().await.expect("shutdown");
    let record_line = cli(&env, &["dlq", "list", "--json"]).await.stdout;
    let record: worker_core::DeadLetterRecord =
        serde_json::from_str(record_line.trim()).expect("record");
    let trace_id = record.failure_metadata.trace_id.clone();

    // Dry run: says what it would do, changes nothing.
    let dry = cli(&env, &["dlq", "replay", "evt_fix", "--dry-run"]).await;
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert!(dry.stdout.contains("would replay"), "{}", dry.stdout);
    assert_eq!((env.depth(&dlq).await, env.depth(&work).await), (1, 0));

    // A replay needs a selection.
    assert_eq!(cli(&env, &["dlq", "replay"]).await.code, 2);

    let replay = cli(&env, &["dlq", "replay", "evt_fix"]).await;
    assert_eq!(replay.code, 0, "{}", replay.stderr);
    assert!(replay.stdout.contains("replayed"), "{}", replay.stdout);
    assert_eq!((env.depth(&dlq).await, env.depth(&work).await), (0, 1));

    // What sits in the work queue is the producer's message.
    let copy = env
        .channel
        .basic_get(work.as_str().into(), BasicGetOptions { no_ack: false })
        .await
        .expect("get")
        .expect("the replayed copy");
    let delivery = &copy.delivery;
    assert_eq!(delivery.data, body, "byte-identical body");
    let p = &delivery.properties;
    assert_eq!(p.message_id().as_ref().map(|s| s.as_str()), Some("evt_fix"));
    assert_eq!(
        p.correlation_id().as_ref().map(|s| s.as_str()),
        Some("corr-9")
    );
    assert_eq!(p.app_id().as_ref().map(|s| s.as_str()), Some("checkout"));
    assert_eq!(*p.timestamp(), Some(1_700_000_000));
    let got = p.headers().clone().expect("headers");
    let got = got.inner();
    for (key, value) in headers.inner() {
        assert_eq!(got.get(key), Some(value), "header {key} with its type");
    }
    assert!(!got.contains_key("x-worker-attempts"), "attempts reset");
    assert_eq!(
        got.get("x-worker-trace-id"),
        Some(&text(&trace_id)),
        "the trace carries on"
    );
    env.channel
        .basic_reject(delivery.delivery_tag, BasicRejectOptions { requeue: true })
        .await
        .expect("put it back");

    // Fixed: the replayed event is processed once, from attempt 1, in the same trace.
    BROKEN.store(false, Ordering::SeqCst);
    let worker = builder(&env).start().await.expect("worker starts");
    eventually("the replayed event is processed", || async {
        env.effects("evt_fix").await == 1
    })
    .await;
    {
        let seen = SEEN.lock().expect("lock");
        let last = seen.last().expect("attempts");
        assert_eq!((last.1, last.2.as_str()), (1, trace_id.as_str()));
        assert!(seen.iter().all(|s| s.2 == trace_id), "{seen:?}");
    }

    // Replaying again: nothing left to replay.
    let again = cli(&env, &["dlq", "replay", "evt_fix"]).await;
    assert_eq!(again.code, 3, "{}", again.stderr);
    // A stale copy of the record replayed anyway is a duplicate: dedup skips it.
    env.channel
        .basic_publish(
            "".into(),
            dlq.as_str().into(),
            BasicPublishOptions::default(),
            record_line.trim().as_bytes(),
            BasicProperties::default().with_message_id(ShortString::from("evt_fix")),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    let stale = cli(&env, &["dlq", "replay", "--all"]).await;
    assert_eq!(stale.code, 0, "{}", stale.stderr);
    eventually("the stale replay was consumed", || async {
        env.depth(&work).await == 0 && env.depth(&dlq).await == 0
    })
    .await;
    worker.shutdown().await.expect("shutdown");
    assert_eq!(env.effects("evt_fix").await, 1, "processed exactly once");
    assert_eq!(
        env.count(
            "SELECT count(*) FROM processed_events WHERE event_id = $1",
            "evt_fix"
        )
        .await,
        1
    );
}
