//! The dead-letter store in use (`WORKER_DLQ_STORE=on`): the worker moves its dead letters into
//! the table, and the `dlq` commands read and act on it: list with filters (trace id prefix,
//! fingerprint, status), show, stats, replay (the row marked replayed after the confirm, the event
//! then processed once), purge (the row marked purged).

use serde_json::json;
use worker_rabbitmq::cli::CliOutput;
use worker_rabbitmq::{Worker, WorkerBuilder};
use worker_tests::handlers::scripted;
use worker_tests::{eventually, TestEnv};

fn builder(env: &TestEnv) -> WorkerBuilder {
    Worker::builder()
        .handler(scripted)
        .migrations(TestEnv::migrator())
        .settings(env.settings())
}

async fn cli(env: &TestEnv, args: &[&str]) -> CliOutput {
    let args = std::iter::once("worker").chain(args.iter().copied());
    builder(env).run_with_args(args).await
}

async fn rows(env: &TestEnv, status: &str) -> i64 {
    sqlx::query_scalar(&format!(
        "SELECT count(*) FROM \"{}\".dead_letters WHERE status = $1",
        env.id
    ))
    .bind(status)
    .fetch_one(&env.pool)
    .await
    .unwrap_or(0)
}

fn event_ids(output: &CliOutput) -> Vec<String> {
    let mut ids: Vec<String> = output
        .stdout
        .lines()
        .map(|line| {
            let record: worker_core::DeadLetterRecord =
                serde_json::from_str(line).expect("a record per line");
            record.original_message.id.unwrap_or_default()
        })
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dlq_commands_read_and_act_on_the_store() {
    let mut env = TestEnv::new().await;
    env.config.dlq_store = true;
    let dlq = format!("{}.dlq", env.queue("scripted"));
    let worker = builder(&env).start().await.expect("worker starts");
    // Exhausts its 3 attempts, then succeeds when replayed (attempts across replays count).
    env.publish_json("Scripted", "evt_fixable", json!({"failTotal": 3}))
        .await;
    env.publish_json("Scripted", "evt_bad_1", json!({"poison": true}))
        .await;
    env.publish_json("Scripted", "evt_bad_2", json!({"poison": true}))
        .await;
    eventually("three dead letters stored, the queue emptied", || async {
        rows(&env, "pending").await == 3 && env.depth(&dlq).await == 0
    })
    .await;

    let all = cli(&env, &["dlq", "list", "--json"]).await;
    assert_eq!(all.code, 0, "{}", all.stderr);
    assert_eq!(event_ids(&all), ["evt_bad_1", "evt_bad_2", "evt_fixable"]);
    let fixable: worker_core::DeadLetterRecord = all
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<worker_core::DeadLetterRecord>(l).unwrap())
        .find(|r| r.original_message.id.as_deref() == Some("evt_fixable"))
        .unwrap();
    let prefix = &fixable.failure_metadata.trace_id[..8];
    let by_trace = cli(&env, &["dlq", "list", "--trace-id", prefix, "--json"]).await;
    assert_eq!(event_ids(&by_trace), ["evt_fixable"]);

    let bad: worker_core::DeadLetterRecord = all
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<worker_core::DeadLetterRecord>(l).unwrap())
        .find(|r| r.original_message.id.as_deref() == Some("evt_bad_1"))
        .unwrap();
    let group = worker_rabbitmq::dlq::fingerprint(&bad);
    let by_group = cli(&env, &["dlq", "list", "--fingerprint", &group, "--json"]).await;
    assert_eq!(event_ids(&by_group), ["evt_bad_1", "evt_bad_2"], "{group}");

    let show = cli(&env, &["dlq", "show", "evt_fixable"]).await;
    assert_eq!(show.code, 0, "{}", show.stderr);
    assert!(show.stdout.contains("evt_fixable"), "{}", show.stdout);
    let stats = cli(&env, &["dlq", "stats"]).await;
    assert_eq!(stats.code, 0, "{}", stats.stderr);
    assert!(stats.stdout.contains("scripted"), "{}", stats.stdout);
    let stats = cli(&env, &["dlq", "stats", "--json"]).await;
    let stats: serde_json::Value = serde_json::from_str(stats.stdout.trim()).expect("json");
    assert_eq!(
        stats["handlers"],
        json!([{"handler": "scripted", "count": 3, "poison": 2, "retryable": 1}]),
        "counted by the database"
    );
    let groups = stats["groups"].as_array().expect("groups");
    assert_eq!(groups.len(), 2, "{groups:?}");
    assert_eq!(
        (groups[0]["count"].clone(), groups[0]["fingerprint"].clone()),
        (json!(2), json!(group)),
        "the biggest group first"
    );

    let replay = cli(&env, &["dlq", "replay", "evt_fixable"]).await;
    assert_eq!(replay.code, 0, "{}\n{}", replay.stdout, replay.stderr);
    eventually("the replayed event processed", || async {
        env.effects("evt_fixable").await == 1
    })
    .await;
    let replayed = cli(&env, &["dlq", "list", "--status", "replayed", "--json"]).await;
    assert_eq!(event_ids(&replayed), ["evt_fixable"]);
    let replayed_at: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(&format!(
        "SELECT replayed_at FROM \"{}\".dead_letters WHERE event_id = 'evt_fixable'",
        env.id
    ))
    .fetch_one(&env.pool)
    .await
    .expect("row");
    assert!(
        replayed_at.is_some(),
        "the row records when it was replayed"
    );

    let purge = cli(&env, &["dlq", "purge", "evt_bad_2", "--yes"]).await;
    assert_eq!(purge.code, 0, "{}\n{}", purge.stdout, purge.stderr);
    assert_eq!(rows(&env, "purged").await, 1);
    let pending = cli(&env, &["dlq", "list", "--json"]).await;
    assert_eq!(
        event_ids(&pending),
        ["evt_bad_1"],
        "only what is still pending"
    );
    worker.shutdown().await.expect("shutdown");
    assert_eq!(env.effects("evt_fixable").await, 1, "processed once");

    // Retention: a replay two days ago expires after a day; a purge just now and a pending row
    // (however old) stay.
    for update in [
        "SET replayed_at = now() - interval '2 days' WHERE event_id = 'evt_fixable'",
        "SET dead_lettered_at = now() - interval '90 days', \
         ingested_at = now() - interval '90 days' WHERE event_id = 'evt_bad_1'",
    ] {
        sqlx::query(&format!("UPDATE \"{}\".dead_letters {update}", env.id))
            .execute(&env.pool)
            .await
            .expect("age the rows");
    }
    let store =
        worker_core::transport::dead_letter::DeadLetterStore::new(env.config.db_schema.clone());
    let deleted = store
        .prune(&env.pool, std::time::Duration::from_secs(24 * 3600))
        .await
        .expect("prune");
    assert_eq!(deleted, 1, "only the old replay expires");
    assert_eq!(
        (
            rows(&env, "replayed").await,
            rows(&env, "purged").await,
            rows(&env, "pending").await
        ),
        (0, 1, 1)
    );

    // Without the store, --status has nothing to read.
    env.config.dlq_store = false;
    let usage = cli(&env, &["dlq", "list", "--status", "replayed"]).await;
    assert_eq!(usage.code, 2, "{}", usage.stderr);
    assert!(
        usage.stderr.contains("WORKER_DLQ_STORE=on"),
        "{}",
        usage.stderr
    );
}
