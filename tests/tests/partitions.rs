//! Partitioned handlers: the events of one key are handled one at a time in publish order across
//! several worker processes, retries are held in place, poison dead-letters and the key goes on,
//! a second worker takes a partition over when the active one is killed, a replayed dead letter
//! rejoins its key's partition and keeps the producer's routing, and the lag metric counts the
//! partition queues.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::Duration;

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;
use serde_json::{json, Value};
use tokio::process::Child;
use worker_tests::{eventually, TestEnv};

const HANDLER: &str = "sequenced";
const PARTITIONS: u16 = 8;

fn spawn_worker(env: &TestEnv, label: &str) -> Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_partition_worker"))
        .envs(env.worker_env())
        .env("PARTITION_WORKER", label)
        .env("WORKER_CONSUMER", label)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn partition_worker")
}

/// Waits until every partition queue has `n` consumers (one active, the others standing by).
/// Counted by `rabbitmqctl`: a passive declare counts only the active consumer of such a queue.
async fn wait_consumers(env: &TestEnv, n: u32) {
    let work = env.queue(HANDLER);
    eventually(&format!("{n} consumers on every partition"), || async {
        let output = std::process::Command::new("rabbitmqctl")
            .args([
                "list_queues",
                "-q",
                "--no-table-headers",
                "name",
                "consumers",
            ])
            .output()
            .expect("rabbitmqctl");
        let listing = String::from_utf8_lossy(&output.stdout).into_owned();
        (0..PARTITIONS).all(|k| {
            let queue = format!("{work}.p{k}");
            listing.lines().any(|line| {
                let mut fields = line.split_whitespace();
                fields.next() == Some(queue.as_str())
                    && fields.next().and_then(|c| c.parse::<u32>().ok()) >= Some(n)
            })
        })
    })
    .await;
}

/// Publishes like a producer in any language: routing key = event type, `x-partition-key` = key.
async fn publish(env: &TestEnv, event_id: &str, payload: Value, key: Option<&str>) {
    let mut headers = FieldTable::default();
    if let Some(key) = key {
        headers.insert(
            ShortString::from("x-partition-key"),
            AMQPValue::LongString(LongString::from(key)),
        );
    }
    let properties = BasicProperties::default()
        .with_message_id(ShortString::from(event_id))
        .with_content_type(ShortString::from("application/json"))
        .with_headers(headers);
    let body = serde_json::to_vec(&payload).expect("json");
    env.publish("Sequenced", &body, properties).await;
}

async fn rows(env: &TestEnv, sql: &str) -> Vec<(String, i32, String)> {
    sqlx::query_as(sql)
        .fetch_all(&env.pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Per key, in log order: the applied seqs strictly increase and are exactly `expected`, and the
/// calls (retries included) never go back to an earlier seq.
async fn assert_in_order(env: &TestEnv, expected: &BTreeMap<String, Vec<i32>>) {
    let applied = rows(
        env,
        "SELECT key, seq, worker FROM partition_applied ORDER BY id",
    )
    .await;
    let mut by_key: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for (key, seq, _) in &applied {
        by_key.entry(key.clone()).or_default().push(*seq);
    }
    for (key, want) in expected {
        let got = by_key.get(key).cloned().unwrap_or_default();
        assert_eq!(&got, want, "applied seqs of {key}, in commit order");
    }
    let calls = rows(
        env,
        "SELECT key, seq, worker FROM partition_calls ORDER BY id",
    )
    .await;
    let mut last: BTreeMap<String, i32> = BTreeMap::new();
    for (key, seq, worker) in &calls {
        let previous = last.insert(key.clone(), *seq).unwrap_or(-1);
        assert!(
            *seq >= previous,
            "{key}: seq {seq} was called (on {worker}) after seq {previous}: out of order"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_keep_each_key_in_order_through_retries_and_poison() {
    worker_tests::ensure_consistent_hash_plugin();
    let env = TestEnv::new().await;
    let mut workers: Vec<Child> = ["w1", "w2", "w3"]
        .iter()
        .map(|label| spawn_worker(&env, label))
        .collect();
    wait_consumers(&env, 3).await;

    const KEYS: usize = 50;
    const SEQS: i32 = 10;
    let poison: BTreeSet<(usize, i32)> = [(7, 4), (21, 8), (40, 0)].into();
    let exhausted: BTreeSet<(usize, i32)> = [(13, 2)].into(); // fails more than its 4 attempts
    let mut expected: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    let mut dead: BTreeSet<String> = BTreeSet::new();
    for seq in 0..SEQS {
        for k in 0..KEYS {
            let key = format!("ord_{k:02}");
            let event_id = format!("evt_{k:02}_{seq}");
            let fail_times = if exhausted.contains(&(k, seq)) {
                10
            } else if k % 5 == 0 && seq == 5 {
                2
            } else if k % 3 == 0 && seq == 3 {
                1
            } else {
                0
            };
            let is_poison = poison.contains(&(k, seq));
            if is_poison || fail_times >= 4 {
                dead.insert(event_id.clone());
            } else {
                expected.entry(key.clone()).or_default().push(seq);
            }
            let payload =
                json!({"key": key, "seq": seq, "failTimes": fail_times, "poison": is_poison});
            publish(&env, &event_id, payload, Some(&key)).await;
        }
    }
    // A producer that forgot the header: dead-lettered as poison, never handled out of order.
    publish(&env, "evt_no_key", json!({"key": "ord_x", "seq": 0}), None).await;
    dead.insert("evt_no_key".into());

    let total: usize = expected.values().map(Vec::len).sum();
    eventually(&format!("{total} events applied"), || async {
        env.count("SELECT count(*) FROM partition_applied WHERE key <> $1", "")
            .await as usize
            >= total
    })
    .await;
    let records = env.wait_dead_letters(HANDLER, dead.len()).await;
    let dead_ids: BTreeSet<String> = records
        .iter()
        .map(|(_, r)| r.original_message.id.clone().unwrap_or_default())
        .collect();
    assert_eq!(dead_ids, dead, "dead-lettered events");
    let no_key = records
        .iter()
        .find(|(_, r)| r.original_message.id.as_deref() == Some("evt_no_key"))
        .expect("the event without a key is dead-lettered");
    assert!(
        no_key
            .1
            .failure_metadata
            .last_error
            .contains("MissingPartitionKey"),
        "{}",
        no_key.1.failure_metadata.last_error
    );
    assert_in_order(&env, &expected).await;
    // Retries happened in place: the exhausted event was called exactly 4 times.
    assert_eq!(
        env.count(
            "SELECT count(*) FROM partition_calls WHERE key = $1 AND seq = 2",
            "ord_13"
        )
        .await,
        4
    );
    let per_worker = rows(
        &env,
        "SELECT worker, count(*)::int, '' FROM partition_applied GROUP BY worker",
    )
    .await;
    eprintln!("applied per worker: {per_worker:?}");
    for worker in &mut workers {
        let _ = worker.kill().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_worker_takes_over_a_killed_workers_partitions_in_order() {
    worker_tests::ensure_consistent_hash_plugin();
    let env = TestEnv::new().await;
    let mut first = spawn_worker(&env, "first");
    wait_consumers(&env, 1).await;
    let mut second = spawn_worker(&env, "second");
    wait_consumers(&env, 2).await;

    const KEYS: usize = 8;
    const SEQS: i32 = 15;
    let mut expected: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for seq in 0..SEQS {
        for k in 0..KEYS {
            let key = format!("ord_{k}");
            expected.entry(key.clone()).or_default().push(seq);
            let fail_times = u32::from(seq == 9);
            let payload = json!({"key": key, "seq": seq, "sleepMs": 40, "failTimes": fail_times});
            publish(&env, &format!("evt_{k}_{seq}"), payload, Some(&key)).await;
        }
    }
    eventually("the first worker applied some events", || async {
        env.count(
            "SELECT count(*) FROM partition_applied WHERE worker = $1",
            "first",
        )
        .await
            >= 20
    })
    .await;
    first.kill().await.expect("kill the first worker");
    let total = KEYS * SEQS as usize;
    eventually(&format!("{total} events applied"), || async {
        env.count("SELECT count(*) FROM partition_applied WHERE key <> $1", "")
            .await as usize
            >= total
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_in_order(&env, &expected).await;
    assert!(
        env.count(
            "SELECT count(*) FROM partition_applied WHERE worker = $1",
            "second"
        )
        .await
            > 0,
        "the second worker continued the partitions"
    );
    let _ = second.kill().await;
}

fn in_process(env: &TestEnv) -> worker_rabbitmq::WorkerBuilder {
    worker_rabbitmq::Worker::builder()
        .handler(worker_tests::partitioned::sequenced)
        .migrations(TestEnv::migrator())
        .settings(env.settings())
}

async fn cli(env: &TestEnv, args: &[&str]) -> worker_rabbitmq::cli::CliOutput {
    let args = std::iter::once("partition-worker").chain(args.iter().copied());
    in_process(env).run_with_args(args).await
}

/// Ready messages in all partition queues together.
async fn partition_depth(env: &TestEnv) -> u32 {
    let mut total = 0;
    for k in 0..PARTITIONS {
        total += env.depth(&format!("{}.p{k}", env.queue(HANDLER))).await;
    }
    total
}

/// `dlq show --json` of `event_id`: the record as stored, left in place.
async fn shown(env: &TestEnv, event_id: &str) -> Value {
    let show = cli(env, &["dlq", "show", event_id, "--json"]).await;
    assert_eq!(show.code, 0, "{}", show.stderr);
    serde_json::from_str(show.stdout.lines().next().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {}", show.stdout))
}

/// A dead-lettered event of a partitioned handler, replayed: it goes back through the hash
/// exchange into its key's partition (behind the key's event in progress, ahead of one
/// published after it), and when it fails again its new record still names the producer's
/// exchange and routing key, not the internal hash exchange, so replaying again works the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_event_rejoins_its_partition_and_keeps_the_producers_routing() {
    worker_tests::ensure_consistent_hash_plugin();
    let env = TestEnv::new().await;
    let worker = in_process(&env).start().await.expect("worker starts");
    let key = "ord_r";
    let event = |seq: i32, extra: Value| {
        let mut payload = json!({"key": key, "seq": seq});
        if let (Some(p), Value::Object(extra)) = (payload.as_object_mut(), extra) {
            p.extend(extra);
        }
        payload
    };
    publish(&env, "evt_r0", event(0, json!({})), Some(key)).await;
    publish(
        &env,
        "evt_r1",
        event(1, json!({"poisonUntilFixed": true})),
        Some(key),
    )
    .await;
    publish(&env, "evt_r2", event(2, json!({})), Some(key)).await;
    let dlq = format!("{}.dlq", env.queue(HANDLER));
    eventually("evt_r1 dead-lettered", || async {
        env.depth(&dlq).await == 1
    })
    .await;
    let first = shown(&env, "evt_r1").await;
    assert_eq!(
        first["originalMessage"]["exchange"],
        env.broker.exchange.as_str()
    );
    assert_eq!(first["originalMessage"]["routingKey"], "Sequenced");

    // Replayed while still broken: it fails again, and the new record keeps the routing.
    let replay = cli(&env, &["dlq", "replay", "evt_r1"]).await;
    assert_eq!(replay.code, 0, "{}", replay.stderr);
    eventually("evt_r1 called again and dead-lettered again", || async {
        env.count(
            "SELECT count(*) FROM partition_calls WHERE seq = 1 AND key = $1",
            key,
        )
        .await
            == 2
            && env.depth(&dlq).await == 1
    })
    .await;
    let again = shown(&env, "evt_r1").await;
    let original = &again["originalMessage"];
    assert_eq!(
        original["exchange"],
        env.broker.exchange.as_str(),
        "the record names the producer's exchange, not the hash exchange: {again}"
    );
    assert_eq!(original["routingKey"], "Sequenced", "{again}");
    assert_eq!(original["headers"]["x-partition-key"], key, "{again}");
    assert!(
        original["properties"]["headers"]
            .as_object()
            .is_some_and(|h| !h.keys().any(|k| k.starts_with("x-worker-"))),
        "no worker headers in the original message: {again}"
    );
    assert_eq!(again["failureMetadata"]["attempts"], 1);

    // The key's partition is busy with a slow event when the fixed event is replayed: the replay
    // must queue behind it (same partition), and an event published after the replay joined
    // the partition must come after it.
    publish(
        &env,
        "evt_r3",
        event(3, json!({"sleepMs": 3000})),
        Some(key),
    )
    .await;
    eventually("evt_r3 in progress", || async {
        env.count(
            "SELECT count(*) FROM partition_calls WHERE seq = 3 AND key = $1",
            key,
        )
        .await
            == 1
    })
    .await;
    sqlx::query("INSERT INTO partition_fixed (key, seq) VALUES ($1, 1)")
        .bind(key)
        .execute(&env.pool)
        .await
        .expect("fix evt_r1");
    let replay = cli(&env, &["dlq", "replay", "evt_r1"]).await;
    assert_eq!(replay.code, 0, "{}", replay.stderr);
    eventually("the replay waits in the key's partition", || async {
        partition_depth(&env).await == 1
    })
    .await;
    assert_eq!(
        env.count(
            "SELECT count(*) FROM partition_applied WHERE seq = 3 AND key = $1",
            key
        )
        .await,
        0,
        "evt_r3 was still in progress when the replay joined the partition"
    );
    publish(&env, "evt_r4", event(4, json!({})), Some(key)).await;
    eventually("every event of the key applied", || async {
        env.count("SELECT count(*) FROM partition_applied WHERE key = $1", key)
            .await
            == 5
    })
    .await;
    worker.shutdown().await.expect("clean shutdown");
    let applied: Vec<i32> =
        sqlx::query_scalar("SELECT seq FROM partition_applied WHERE key = $1 ORDER BY id")
            .bind(key)
            .fetch_all(&env.pool)
            .await
            .expect("applied");
    assert_eq!(applied, [0, 2, 3, 1, 4]);
    assert_eq!(env.depth(&dlq).await, 0, "the replayed entry left the DLQ");
}

/// Consumer lag of a partitioned handler: its events wait in the partition queues, and
/// `worker_queue_messages{queue="work"}` counts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_metric_counts_the_partition_queues() {
    worker_tests::ensure_consistent_hash_plugin();
    let env = TestEnv::new().await;
    let worker = in_process(&env).start().await.expect("worker starts");
    let addr = worker.metrics_addr().expect("metrics endpoint");
    // One key, so one partition: the first event is in progress, the rest wait behind it.
    for seq in 0..6 {
        let payload = json!({"key": "ord_lag", "seq": seq, "sleepMs": 400});
        publish(&env, &format!("evt_lag_{seq}"), payload, Some("ord_lag")).await;
    }
    let work = r#"worker_queue_messages{handler="sequenced",queue="work"} "#;
    let lag = || async {
        let (_, body) = worker_tests::http_get(addr, "/metrics").await;
        body.lines()
            .find_map(|l| l.strip_prefix(work))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    eventually("the waiting events show as lag", || async {
        lag().await >= 3.0
    })
    .await;
    eventually("every event applied", || async {
        env.count(
            "SELECT count(*) FROM partition_applied WHERE key = $1",
            "ord_lag",
        )
        .await
            == 6
    })
    .await;
    eventually("the lag drains", || async { lag().await == 0.0 }).await;
    worker.shutdown().await.expect("clean shutdown");
}
