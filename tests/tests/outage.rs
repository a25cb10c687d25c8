//! A downstream outage with the circuit breaker: 200 events arrive while a (simulated) payment
//! gateway is down for 20 s. With the breaker (the default), none is dead-lettered, each is charged
//! exactly once after recovery, and the attempts spent per event stay small. Without it, the same
//! outage spends every attempt of the first events and dead-letters them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::PgConnection;
use worker_core::{handler, Context, HandlerError, State};
use worker_tests::handlers::{insert_effect, record_attempt};
use worker_tests::{eventually, http_get, TestEnv};

/// A payment gateway that answers 503 until `up_at`.
#[derive(Clone, Default)]
struct Gateway {
    up_at: Arc<Mutex<Option<Instant>>>,
}

impl Gateway {
    fn down_for(&self, outage: Duration) {
        *self.up_at.lock().unwrap() = Some(Instant::now() + outage);
    }

    fn charge(&self) -> Result<(), HandlerError> {
        match *self.up_at.lock().unwrap() {
            Some(up_at) if Instant::now() < up_at => Err(HandlerError::retryable(
                "GatewayUnavailable: the payment gateway answered 503",
            )),
            _ => Ok(()),
        }
    }
}

#[derive(serde::Deserialize)]
struct Charge {}

/// Records each attempt (outside the transaction, so failed ones stay), then charges.
#[handler(event = "Charge", dedup, retry = 5)]
async fn charge_via_gateway(
    _event: Charge,
    tx: &mut PgConnection,
    ctx: &Context,
    State(gateway): State<Gateway>,
) -> Result<(), HandlerError> {
    record_attempt(ctx).await?;
    gateway.charge()?;
    insert_effect(tx, ctx).await?;
    Ok(())
}

const EVENTS: usize = 200;
const OUTAGE: Duration = Duration::from_secs(20);

/// Starts a worker (breaker on or off), takes the gateway down, publishes the events, and returns
/// the environment, the worker and what `/metrics` and `/readyz` said during the outage.
async fn outage(
    breaker: bool,
) -> (
    TestEnv,
    worker_rabbitmq::RunningWorker,
    Vec<String>,
    Vec<String>,
) {
    let mut env = TestEnv::new().await;
    if !breaker {
        env.config.breaker.failures = Some(0);
    }
    let gateway = Gateway::default();
    let worker = worker_rabbitmq::Worker::builder()
        .handler(charge_via_gateway)
        .state(gateway.clone())
        .migrations(TestEnv::migrator())
        .settings(env.settings())
        .start()
        .await
        .unwrap();
    let addr = worker.metrics_addr().expect("metrics endpoint");
    gateway.down_for(OUTAGE);
    let down_since = Instant::now();
    for i in 0..EVENTS {
        env.publish_json("Charge", &format!("evt_{i:03}"), json!({}))
            .await;
    }
    let (mut states, mut readiness) = (Vec::new(), Vec::new());
    while down_since.elapsed() < OUTAGE {
        let (_, metrics) = http_get(addr, "/metrics").await;
        if let Some(line) = metrics
            .lines()
            .find(|l| l.starts_with("worker_breaker_state{"))
        {
            states.push(line.to_owned());
        }
        readiness.push(http_get(addr, "/readyz").await.1);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Still within the probe wait that follows the outage: the operator's view of the state.
    let mut settings = env.settings();
    settings.worker.metrics_addr = Some(addr);
    let listed = worker_rabbitmq::Worker::builder()
        .handler(charge_via_gateway)
        .settings(settings)
        .run_with_args(["worker", "handlers", "--json"])
        .await;
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    readiness.push(listed.stdout);
    (env, worker, states, readiness)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_opens_the_breaker_and_no_event_is_dead_lettered() {
    let (env, worker, states, readiness) = outage(true).await;
    let name = "charge-via-gateway";
    eventually("every event is charged after the recovery", || async {
        env.count("SELECT count(*) FROM effects WHERE handler = $1", name)
            .await
            == EVENTS as i64
    })
    .await;
    let addr = worker.metrics_addr().expect("metrics endpoint");
    let (_, after) = http_get(addr, "/metrics").await;
    let (_, ready_after) = http_get(addr, "/readyz").await;
    worker.shutdown().await.unwrap();

    // Half-open lasts as long as one probe delivery: too short to be seen by polling.
    assert!(
        states.iter().any(|s| s.ends_with(" 1")),
        "during the outage the breaker was open (1): {states:?}"
    );
    assert!(
        after.contains(&format!("worker_breaker_state{{handler=\"{name}\"}} 0")),
        "closed again after the recovery: {after}"
    );
    assert_eq!(ready_after, "ready\n", "nothing to report once closed");
    let listed: serde_json::Value =
        serde_json::from_str(readiness.last().expect("the handlers listing")).unwrap();
    assert_eq!(
        listed[0]["breaker"],
        json!({"failures": 10, "probeMs": 2000, "maxProbeMs": 60000, "state": "open"}),
        "`handlers` shows the breaker and its state"
    );
    assert!(
        readiness
            .iter()
            .any(|r| r.starts_with("ready\n")
                && r.contains(&format!("circuit breaker open: {name}"))),
        "/readyz stays ready and says the breaker is open: {readiness:?}"
    );
    let charged: Vec<(String, i64)> = sqlx::query_as(
        "SELECT event_id, count(*) FROM effects GROUP BY event_id HAVING count(*) <> 1",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert!(charged.is_empty(), "charged other than once: {charged:?}");
    assert_eq!(
        env.depth(&format!("{}.dlq", env.queue(name))).await,
        0,
        "nothing dead-lettered"
    );
    let attempts: Vec<(String, i64)> =
        sqlx::query_as("SELECT event_id, count(*) FROM attempts GROUP BY event_id")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    let mut distribution = BTreeMap::<i64, usize>::new();
    for (_, n) in &attempts {
        *distribution.entry(*n).or_default() += 1;
    }
    let failed: i64 = attempts.iter().map(|(_, n)| n - 1).sum();
    println!(
        "attempts per event (attempts → events): {distribution:?}; failed attempts in all: {failed}"
    );
    assert_eq!(attempts.len(), EVENTS);
    let worst = *distribution.keys().max().unwrap();
    assert!(
        worst < 5,
        "no event came near its 5 attempts: {distribution:?}"
    );
    assert!(
        failed <= 40,
        "the breaker stopped the failures early (a handful of events and probes): {failed} failed attempts, {distribution:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_breaker_the_same_outage_dead_letters_events() {
    let (env, worker, states, _) = outage(false).await;
    let dlq = format!("{}.dlq", env.queue("charge-via-gateway"));
    let dead = env.depth(&dlq).await;
    worker.shutdown().await.unwrap();
    assert!(
        states.iter().all(|s| s.ends_with(" 0")),
        "the breaker stayed closed: {states:?}"
    );
    assert!(
        dead > 0,
        "an outage longer than the retry horizon exhausts the attempts of the events in it"
    );
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Limited {
    retry_after_ms: u64,
}

/// Fails its first attempt the way a rate-limited service answers (429 with `Retry-After`).
#[handler(event = "Limited", dedup, retry = 5)]
async fn call_rate_limited_api(
    event: Limited,
    tx: &mut PgConnection,
    ctx: &Context,
) -> Result<(), HandlerError> {
    record_attempt(ctx).await?;
    if ctx.attempt() == 1 {
        return Err(HandlerError::retryable("RateLimited: the API answered 429")
            .retry_after(Duration::from_millis(event.retry_after_ms)));
    }
    insert_effect(tx, ctx).await?;
    Ok(())
}

/// The seconds between an event's first and second attempt, and how many attempts it had.
async fn gap_and_attempts(env: &TestEnv, event_id: &str) -> (f64, i64) {
    sqlx::query_as(
        "SELECT EXTRACT(EPOCH FROM max(at) - min(at))::float8, count(*) FROM attempts WHERE event_id = $1",
    )
    .bind(event_id)
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_waits_at_least_that_long_through_the_delay_queues_bounded_by_the_maximum() {
    let mut env = TestEnv::new().await;
    // The test namespace's backoff tops out at 800 ms (+50 ms jitter) per delay level, so a
    // 3 s wait takes several trips through the delay queues.
    env.config.max_retry_after = Duration::from_secs(5);
    let worker = worker_rabbitmq::Worker::builder()
        .handler(call_rate_limited_api)
        .migrations(TestEnv::migrator())
        .settings(env.settings())
        .start()
        .await
        .unwrap();
    env.publish_json("Limited", "evt_wait_3s", json!({"retryAfterMs": 3000}))
        .await;
    env.publish_json("Limited", "evt_wait_1h", json!({"retryAfterMs": 3_600_000}))
        .await;
    eventually(
        "both events are processed on their second attempt",
        || async {
            env.count(
                "SELECT count(*) FROM effects WHERE handler = $1",
                "call-rate-limited-api",
            )
            .await
                == 2
        },
    )
    .await;
    worker.shutdown().await.unwrap();

    let (gap, attempts) = gap_and_attempts(&env, "evt_wait_3s").await;
    println!("asked for 3 s: second attempt after {gap:.2} s");
    assert_eq!(attempts, 2, "waiting early copies never ran the handler");
    assert!(gap >= 3.0, "waited at least the 3 s asked for: {gap:.2} s");
    assert!(
        gap < 5.0,
        "and not much longer (one level's TTL at most): {gap:.2} s"
    );
    let (gap, attempts) = gap_and_attempts(&env, "evt_wait_1h").await;
    println!("asked for 1 h with a 5 s maximum: second attempt after {gap:.2} s");
    assert_eq!(attempts, 2);
    assert!(
        (5.0..7.0).contains(&gap),
        "an hour is cut to WORKER_RETRY_AFTER_MAX (5 s here): {gap:.2} s"
    );
}

#[derive(serde::Deserialize)]
struct Stuck {}

/// A handler whose dependency never answers.
#[handler(event = "Stuck", concurrency = 1)]
async fn wait_for_a_hung_dependency(_event: Stuck) -> Result<(), HandlerError> {
    std::future::pending::<()>().await;
    Ok(())
}

/// The value of the `/metrics` line that starts with `series`.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_consumer_shows_as_growing_lag_seconds_while_the_depth_stays_flat() {
    let mut env = TestEnv::new().await;
    env.config.shutdown_timeout = Duration::from_millis(500);
    let worker = worker_rabbitmq::Worker::builder()
        .handler(wait_for_a_hung_dependency)
        .settings(env.settings())
        .start()
        .await
        .unwrap();
    let addr = worker.metrics_addr().expect("metrics endpoint");
    let sent = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for i in 0..4 {
        let properties = lapin::BasicProperties::default()
            .with_message_id(format!("evt_stuck_{i}").into())
            .with_timestamp(sent);
        env.publish("Stuck", b"{}", properties).await;
    }
    let name = "wait-for-a-hung-dependency";
    let lag = format!("worker_lag_seconds{{handler=\"{name}\"}}");
    let depth = format!("worker_queue_messages{{handler=\"{name}\",queue=\"work\"}}");
    let mut seen = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(6) {
        let (_, metrics) = http_get(addr, "/metrics").await;
        if let (Some(lag), Some(depth)) = (sample(&metrics, &lag), sample(&metrics, &depth)) {
            seen.push((lag, depth));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    worker.shutdown().await.unwrap();
    println!("(lag seconds, work queue depth) every 500 ms: {seen:?}");
    let settled: Vec<_> = seen.iter().filter(|(_, depth)| *depth == 3.0).collect();
    assert!(
        settled.len() >= 6,
        "one delivery hangs in the handler, three wait in the queue: {seen:?}"
    );
    let (first, last) = (settled[0].0, settled[settled.len() - 1].0);
    assert!(
        last > 4.0 && last > first + 2.0,
        "the lag keeps growing past 4 s while the depth stays at 3: {seen:?}"
    );
}
