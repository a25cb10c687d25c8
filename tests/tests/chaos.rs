//! The chaos test: ≥ 20,000 events (5% duplicate ids, some published concurrently, 1% poison,
//! 2% failing once) consumed by two competing worker processes while a supervisor SIGKILLs and
//! restarts workers, closes their broker connections and terminates their Postgres backends at
//! random. At the end every non-poison event's effect exists exactly once, the DLQ holds exactly
//! the poison set, and every queue is drained.
//!
//! `CHAOS_EVENTS` sets the number of events (default 20000); `CHAOS_SOAK=1` also restarts the
//! broker's app mid-run (`rabbitmqctl stop_app` / `start_app`) — only for a machine where nothing
//! else uses the broker (see README, "Guarantees").

use std::collections::{BTreeSet, HashMap};
use std::process::Stdio;
use std::time::{Duration, Instant};

use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::BasicProperties;
use rand::seq::SliceRandom;
use rand::Rng;
use tokio::process::{Child, Command};
use worker_tests::{close_connections_named, eventually, TestEnv};

struct Workers {
    id: String,
    database_url: String,
    worker_env: Vec<(&'static str, String)>,
    children: Vec<Child>,
    started: usize,
}

impl Workers {
    fn name(&self, slot: usize) -> String {
        format!("chaos-{}-{slot}", self.id)
    }

    fn spawn(&mut self, slot: usize) -> Child {
        self.started += 1;
        let database_url = format!("{}?application_name={}", self.database_url, self.name(slot));
        Command::new(env!("CARGO_BIN_EXE_crash_worker"))
            .envs(self.worker_env.clone())
            .env("WORKER_CONSUMER", self.name(slot))
            .env("DATABASE_URL", database_url)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn a worker")
    }

    async fn kill_and_restart(&mut self, slot: usize) {
        let _ = self.children[slot].start_kill();
        let _ = self.children[slot].wait().await;
        self.children[slot] = self.spawn(slot);
    }
}

fn event_ids(
    n: usize,
) -> (
    Vec<(String, &'static str)>,
    BTreeSet<String>,
    BTreeSet<String>,
) {
    let mut rng = rand::thread_rng();
    let mut events = Vec::with_capacity(n + n / 20);
    let (mut poison, mut good) = (BTreeSet::new(), BTreeSet::new());
    for i in 0..n {
        let id = format!("evt_{i:06}");
        let roll: f64 = rng.gen();
        let body = if roll < 0.01 {
            poison.insert(id.clone());
            r#"{"poison": true}"#
        } else if roll < 0.03 {
            good.insert(id.clone());
            r#"{"failTimes": 1}"#
        } else {
            good.insert(id.clone());
            "{}"
        };
        events.push((id, body));
    }
    // 5% duplicates: some right after the original (concurrently in flight), some later.
    let duplicates: Vec<(String, &'static str)> =
        events.choose_multiple(&mut rng, n / 20).cloned().collect();
    for (k, dup) in duplicates.into_iter().enumerate() {
        let at = if k % 2 == 0 {
            events.iter().position(|e| e.0 == dup.0).expect("present") + 1
        } else {
            rng.gen_range(0..events.len())
        };
        events.insert(at.min(events.len()), dup);
    }
    (events, good, poison)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_effects_under_kills_connection_losses_and_backend_terminations() {
    let n: usize = std::env::var("CHAOS_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let soak = std::env::var("CHAOS_SOAK").as_deref() == Ok("1");
    let mut env = TestEnv::new().await;
    let (events, good, poison) = event_ids(n);
    let queue = env.queue("scripted");

    let mut workers = Workers {
        id: env.id.clone(),
        database_url: env.config.database_url.clone(),
        worker_env: env.worker_env(),
        children: Vec::new(),
        started: 0,
    };
    for slot in 0..2 {
        let child = workers.spawn(slot);
        workers.children.push(child);
    }
    eventually("both workers consume", || async {
        env.consumers(&queue).await >= 2
    })
    .await;

    let started = Instant::now();
    // The broker is restarted (soak mode) only once every event is published and confirmed.
    let published = std::sync::atomic::AtomicBool::new(false);
    let publisher = async {
        for batch in events.chunks(500) {
            let mut confirms = Vec::with_capacity(batch.len());
            for (id, body) in batch {
                let properties = BasicProperties::default()
                    .with_message_id(ShortString::from(id.as_str()))
                    .with_delivery_mode(2);
                let confirm = env
                    .channel
                    .basic_publish(
                        env.broker.exchange.as_str().into(),
                        "Scripted".into(),
                        BasicPublishOptions::default(),
                        body.as_bytes(),
                        properties,
                    )
                    .await
                    .expect("publish");
                confirms.push(confirm);
            }
            for confirm in confirms {
                assert!(
                    confirm.await.expect("confirm").is_ack(),
                    "the broker confirmed every event"
                );
            }
        }
        published.store(true, std::sync::atomic::Ordering::SeqCst);
    };
    let (mut kills, mut closes, mut terminations, mut broker_restarts) = (0, 0, 0, 0);
    let chaos = async {
        let seconds = std::env::var("CHAOS_SECONDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(if soak { 240 } else { 45 });
        let chaos_for = Duration::from_secs(seconds);
        while started.elapsed() < chaos_for {
            let pause = rand::thread_rng().gen_range(300..1500);
            tokio::time::sleep(Duration::from_millis(pause)).await;
            let slot = rand::thread_rng().gen_range(0..2);
            match rand::thread_rng().gen_range(0..if soak { 7 } else { 6 }) {
                0 | 1 => {
                    workers.kill_and_restart(slot).await;
                    kills += 1;
                }
                2 | 3 => closes += close_connections_named(&workers.name(slot)),
                4 | 5 => {
                    let terminated: Vec<bool> = sqlx::query_scalar("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1")
                        .bind(workers.name(slot))
                        .fetch_all(&env.pool)
                        .await
                        .expect("terminate backends");
                    terminations += terminated.len();
                }
                _ if !published.load(std::sync::atomic::Ordering::SeqCst) => {}
                _ => {
                    let run = |cmd: &str| {
                        std::process::Command::new("rabbitmqctl")
                            .arg(cmd)
                            .status()
                            .map(|s| s.success())
                            .unwrap_or(false)
                    };
                    assert!(run("stop_app") && run("start_app"), "broker restart");
                    broker_restarts += 1;
                }
            }
        }
    };
    futures::join!(publisher, chaos);
    if broker_restarts > 0 {
        // The test's own connection did not survive the broker restarts.
        env.connection = worker_tests::amqp_connect().await;
        env.channel = env.connection.create_channel().await.expect("channel");
        env.channel
            .confirm_select(Default::default())
            .await
            .expect("confirm_select");
    }

    // Calm: both workers up, everything drains.
    for slot in 0..2 {
        if workers.children[slot].try_wait().expect("wait").is_some() {
            workers.kill_and_restart(slot).await;
        }
    }
    let mut retry_queues: Vec<String> = (1..=2)
        .map(|level| format!("{queue}.retry.{level}"))
        .collect();
    retry_queues.push(queue.clone());
    let effects_sql = "SELECT count(*) FROM effects WHERE handler = $1";
    let calm = Instant::now();
    loop {
        let mut depths = Vec::new();
        for q in &retry_queues {
            depths.push(env.depth(q).await);
        }
        let done = env.count(effects_sql, "scripted").await as usize;
        if depths.iter().all(|&d| d == 0) && done >= good.len() {
            break;
        }
        if calm.elapsed() > Duration::from_secs(120) {
            let consumers = env.consumers(&queue).await;
            let alive: Vec<bool> = workers
                .children
                .iter_mut()
                .map(|c| c.try_wait().ok().flatten().is_none())
                .collect();
            let records = env.take_dead_letters("scripted").await;
            let unexpected: Vec<String> = records
                .iter()
                .filter(|(_, r)| !poison.contains(r.original_message.id.as_deref().unwrap_or("")))
                .map(|(_, r)| {
                    format!(
                        "{:?}: {} ({} attempts)",
                        r.original_message.id,
                        r.failure_metadata.last_error,
                        r.failure_metadata.attempts
                    )
                })
                .collect();
            let listing = std::process::Command::new("rabbitmqctl")
                .args([
                    "list_queues",
                    "-q",
                    "name",
                    "messages_ready",
                    "messages_unacknowledged",
                ])
                .output()
                .expect("rabbitmqctl");
            let listing: Vec<String> = String::from_utf8_lossy(&listing.stdout)
                .lines()
                .filter(|l| l.contains(&env.id))
                .map(str::to_owned)
                .collect();
            eprintln!("dead letters of good events: {unexpected:#?}\nqueues: {listing:#?}");
            panic!("not drained after 120 s of calm: queue depths {depths:?} (retry.1, retry.2, work), effects {done} of {}, consumers {consumers}, workers alive {alive:?}", good.len());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let elapsed = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await; // let in-flight settles finish before stopping
    for child in &mut workers.children {
        let _ = child.start_kill();
    }

    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT event_id, count(*) FROM effects WHERE handler = 'scripted' GROUP BY event_id",
    )
    .fetch_all(&env.pool)
    .await
    .expect("effects");
    let effects: HashMap<String, i64> = rows.into_iter().collect();
    let missing = good.iter().filter(|id| !effects.contains_key(*id)).count();
    let duplicated = effects.values().filter(|&&c| c > 1).count();
    let unexpected = effects.keys().filter(|id| poison.contains(*id)).count();
    let records = env.take_dead_letters("scripted").await;
    let dead: BTreeSet<String> = records
        .iter()
        .filter_map(|(_, r)| r.original_message.id.clone())
        .collect();
    let complete = records.iter().all(|(_, r)| {
        let m = &r.failure_metadata;
        m.attempts >= 1
            && !m.last_error.is_empty()
            && m.trace_id.len() == 32
            && m.handler == "scripted"
            && r.original_message.payload["poison"] == true
    });
    let throughput = events.len() as f64 / elapsed.as_secs_f64();
    println!("\nchaos test ({} mode)", if soak { "soak" } else { "CI" });
    println!("| events published | distinct | poison | duplicates published | workers started | SIGKILLs | connections closed | backends terminated | broker restarts |");
    println!("|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {} | {} | {} | {kills} | {closes} | {terminations} | {broker_restarts} |",
        events.len(),
        good.len() + poison.len(),
        poison.len(),
        events.len() - good.len() - poison.len(),
        workers.started
    );
    println!("| effects missing | effects duplicated | poison with effects | DLQ records | DLQ ids = poison set | extra DLQ copies | elapsed | throughput |");
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| {missing} | {duplicated} | {unexpected} | {} | {} | {} | {:.1} s | {:.0} events/s |",
        records.len(),
        dead == poison,
        records.len() - dead.len(),
        elapsed.as_secs_f64(),
        throughput
    );

    assert_eq!(missing, 0, "every non-poison event's effect happened");
    assert_eq!(duplicated, 0, "no effect happened twice");
    assert_eq!(unexpected, 0, "no poison event had an effect");
    assert_eq!(dead, poison, "the DLQ holds exactly the poison set");
    assert!(complete, "every dead-letter record is complete");
    for q in &retry_queues {
        assert_eq!(env.depth(q).await, 0, "{q} drained");
    }
}
