//! The dead-letter store in use (the default): the worker moves its dead letters into the
//! table, and the `dlq` commands read and act on it: list with filters (trace id prefix,
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
    cli_as(env.settings(), args).await
}

/// The CLI with settings changed from the test's.
async fn cli_as(settings: worker_rabbitmq::Settings, args: &[&str]) -> CliOutput {
    let args = std::iter::once("worker").chain(args.iter().copied());
    Worker::builder()
        .handler(scripted)
        .migrations(TestEnv::migrator())
        .settings(settings)
        .run_with_args(args)
        .await
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
    // `dlq ingest` applies the retention too, and says what it deleted.
    sqlx::query(&format!(
        "UPDATE \"{}\".dead_letters SET purged_at = now() - interval '2 days' \
         WHERE status = 'purged'",
        env.id
    ))
    .execute(&env.pool)
    .await
    .expect("age the purge");
    let mut short = env.settings();
    short.worker.dlq_store_retention = std::time::Duration::from_secs(24 * 3600);
    let ingest = cli_as(short, &["dlq", "ingest", "--until-empty"]).await;
    assert_eq!(ingest.code, 0, "{}", ingest.stderr);
    assert!(
        ingest
            .stdout
            .contains("deleted 1 replayed or purged row(s) older than 1d"),
        "{}",
        ingest.stdout
    );
    assert_eq!(
        (rows(&env, "purged").await, rows(&env, "pending").await),
        (0, 1)
    );

    // Without the store, --status has nothing to read.
    env.config.dlq_store = false;
    let usage = cli(&env, &["dlq", "list", "--status", "replayed"]).await;
    assert_eq!(usage.code, 2, "{}", usage.stderr);
    assert!(
        usage.stderr.contains(
            "--status needs the dead-letter store (this worker runs WORKER_DLQ_STORE=off)"
        ),
        "{}",
        usage.stderr
    );
}

/// Ages a row as if its event had failed `hours` ago: the indexed column and the record's
/// timestamps, which the commands compare.
async fn age(env: &TestEnv, event_id: &str, hours: i64) {
    let at = (chrono::Utc::now() - chrono::Duration::hours(hours))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    sqlx::query(&format!(
        "UPDATE \"{}\".dead_letters SET dead_lettered_at = $2::timestamptz, \
         last_failed_at = $2::timestamptz, first_failed_at = $2::timestamptz, \
         record = jsonb_set(jsonb_set(record, '{{failureMetadata,lastFailedAt}}', to_jsonb($2)), \
                            '{{failureMetadata,firstFailedAt}}', to_jsonb($2)) \
         WHERE event_id = $1",
        env.id
    ))
    .bind(event_id)
    .bind(at)
    .execute(&env.pool)
    .await
    .expect("age the row");
}

/// The counts kept by the triggers equal a count of the rows.
async fn assert_counts_exact(env: &TestEnv) {
    let kept: Vec<(String, String, String, i64)> = sqlx::query_as(&format!(
        "SELECT handler, status, fingerprint, count FROM \"{}\".dead_letter_groups \
         WHERE count <> 0 ORDER BY 1, 2, 3",
        env.id
    ))
    .fetch_all(&env.pool)
    .await
    .expect("kept counts");
    let counted: Vec<(String, String, String, i64)> = sqlx::query_as(&format!(
        "SELECT handler, status, coalesce(fingerprint, ''), count(*) FROM \"{}\".dead_letters \
         GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        env.id
    ))
    .fetch_all(&env.pool)
    .await
    .expect("counted");
    assert_eq!(kept, counted, "dead_letter_groups is exact");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrected_replays_time_ranges_stale_entries_and_metrics() {
    let mut env = TestEnv::new().await;
    env.config.dlq_store = true;
    let worker = builder(&env).start().await.expect("worker starts");
    let metrics = worker.metrics_addr().expect("metrics endpoint");
    for id in ["evt_old", "evt_fix", "evt_new"] {
        env.publish_json("Scripted", id, json!({"poison": true}))
            .await;
    }
    eventually("three dead letters stored", || async {
        rows(&env, "pending").await == 3
    })
    .await;
    assert_counts_exact(&env).await;
    eventually("the pending dead letters on /metrics", || async {
        let (_, body) = worker_tests::http_get(metrics, "/metrics").await;
        body.contains("worker_dead_letters_pending{handler=\"scripted\"} 3")
            && body.contains(
                "worker_dead_letter_group_pending{handler=\"scripted\",\
                 fingerprint=\"poison ScriptedPoison: this event can never succeed\"} 3",
            )
    })
    .await;

    // The store's reads need no broker: with an unreachable one they still answer.
    let mut offline = env.settings();
    offline.broker.url = format!(
        "amqp://guest:guest@127.0.0.1:{}/%2f",
        worker_tests::closed_port()
    );
    let listed = cli_as(offline.clone(), &["dlq", "list", "--json"]).await;
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    assert_eq!(event_ids(&listed), ["evt_fix", "evt_new", "evt_old"]);
    for args in [
        &["dlq", "stats"][..],
        &["dlq", "show", "evt_fix"],
        &["dlq", "replay", "--all", "--dry-run"],
    ] {
        let out = cli_as(offline.clone(), args).await;
        assert_eq!(out.code, 0, "{args:?}: {}", out.stderr);
    }

    // Time ranges.
    age(&env, "evt_old", 3).await;
    let until = cli(&env, &["dlq", "list", "--until", "2h", "--json"]).await;
    assert_eq!(event_ids(&until), ["evt_old"], "{}", until.stderr);
    let since = cli(&env, &["dlq", "list", "--since", "2h", "--json"]).await;
    assert_eq!(event_ids(&since), ["evt_fix", "evt_new"]);
    let from = (chrono::Utc::now() - chrono::Duration::hours(4)).to_rfc3339();
    let to = (chrono::Utc::now() - chrono::Duration::hours(2)).to_rfc3339();
    let range = cli(
        &env,
        &["dlq", "list", "--since", &from, "--until", &to, "--json"],
    )
    .await;
    assert_eq!(event_ids(&range), ["evt_old"], "{}", range.stderr);

    // Older than the dedup retention: refused without --force, said in a dry run.
    let mut short = env.settings();
    short.worker.dedup_retention = std::time::Duration::from_secs(3600);
    let refused = cli_as(short.clone(), &["dlq", "replay", "evt_old"]).await;
    assert_eq!(refused.code, 2, "{}\n{}", refused.stdout, refused.stderr);
    assert!(
        refused.stderr.contains("more than 1h ago") && refused.stderr.contains("--force"),
        "{}",
        refused.stderr
    );
    assert_eq!(rows(&env, "pending").await, 3, "nothing replayed");
    let dry = cli_as(short.clone(), &["dlq", "replay", "evt_old", "--dry-run"]).await;
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert!(
        dry.stderr.contains("dedup rows may have been pruned"),
        "{}",
        dry.stderr
    );

    // A corrected payload: one dead letter, the store records what changed.
    let file = std::env::temp_dir().join(format!("{}-payload.json", env.id));
    std::fs::write(&file, r#"{"poison": false}"#).expect("write the payload file");
    let path = file.to_str().expect("utf-8 path");
    let many = cli(&env, &["dlq", "replay", "--all", "--payload", path]).await;
    assert_eq!(many.code, 2, "{}", many.stderr);
    assert!(many.stderr.contains("but 3 match"), "{}", many.stderr);
    let mut queue_only = env.settings();
    queue_only.worker.dlq_store = false;
    let no_store = cli_as(queue_only, &["dlq", "replay", "evt_fix", "--payload", path]).await;
    assert_eq!(no_store.code, 2, "{}", no_store.stderr);
    assert!(
        no_store.stderr.contains(
            "--payload needs the dead-letter store (this worker runs WORKER_DLQ_STORE=off)"
        ),
        "{}",
        no_store.stderr
    );
    let fixed = cli(&env, &["dlq", "replay", "evt_fix", "--payload", path]).await;
    assert_eq!(fixed.code, 0, "{}\n{}", fixed.stdout, fixed.stderr);
    eventually("the corrected event processed", || async {
        env.effects("evt_fix").await == 1
    })
    .await;
    let (payload, changes, status): (serde_json::Value, serde_json::Value, String) =
        sqlx::query_as(&format!(
            "SELECT replayed_payload, payload_changes, status FROM \"{}\".dead_letters \
             WHERE event_id = 'evt_fix'",
            env.id
        ))
        .fetch_one(&env.pool)
        .await
        .expect("row");
    assert_eq!(payload, json!({"poison": false}));
    assert_eq!(
        changes,
        json!([{"path": "/poison", "before": true, "after": false}])
    );
    assert_eq!(status, "replayed");
    let original = cli(&env, &["dlq", "list", "--status", "replayed", "--json"]).await;
    let record: worker_core::DeadLetterRecord =
        serde_json::from_str(original.stdout.trim()).expect("one record");
    assert_eq!(
        record.original_message.payload,
        json!({"poison": true}),
        "the original is kept"
    );
    let _ = std::fs::remove_file(&file);

    // With --force, the stale one goes too (and fails again: it is still poison).
    let forced = cli_as(short.clone(), &["dlq", "replay", "evt_old", "--force"]).await;
    assert_eq!(forced.code, 0, "{}\n{}", forced.stdout, forced.stderr);
    let purged = cli(&env, &["dlq", "purge", "evt_new", "--yes"]).await;
    assert_eq!(purged.code, 0, "{}", purged.stderr);
    eventually("evt_old dead-lettered again", || async {
        rows(&env, "pending").await == 1 && rows(&env, "replayed").await == 2
    })
    .await;
    assert_counts_exact(&env).await;
    let stats = cli(&env, &["dlq", "stats", "--json"]).await;
    let stats: serde_json::Value = serde_json::from_str(stats.stdout.trim()).expect("json");
    assert_eq!(
        stats["handlers"],
        json!([{"handler": "scripted", "count": 1, "poison": 1, "retryable": 0}])
    );
    assert_eq!(stats["groups"][0]["exampleEventId"], json!("evt_old"));
    eventually("the metrics follow", || async {
        let (_, body) = worker_tests::http_get(metrics, "/metrics").await;
        body.contains("worker_dead_letters_pending{handler=\"scripted\"} 1")
    })
    .await;
    worker.shutdown().await.expect("shutdown");
}

/// A store created by version 1 (before the kept counts) is upgraded: its rows are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_store_is_upgraded_with_its_rows_counted() {
    let env = TestEnv::new().await;
    let store =
        worker_core::transport::dead_letter::DeadLetterStore::new(env.config.db_schema.clone());
    store.migrate(&env.pool).await.expect("migrate");
    let schema = format!("\"{}\"", env.id);
    // Back to version 1's objects (its SQL is unchanged since it was released).
    sqlx::raw_sql(&format!(
        "DROP TABLE {schema}.dead_letter_groups;
         DROP FUNCTION {schema}.dead_letter_groups_count() CASCADE;
         ALTER TABLE {schema}.dead_letters DROP COLUMN replayed_payload,
                                           DROP COLUMN payload_changes;
         DROP INDEX {schema}.dead_letters_group_idx;
         CREATE INDEX dead_letters_fingerprint_idx
             ON {schema}.dead_letters (fingerprint, status, dead_lettered_at);
         DELETE FROM {schema}.worker_schema_migrations
             WHERE component = 'dead_letters' AND version = 2;
         INSERT INTO {schema}.dead_letters (record_key, queue, handler, fingerprint, error_kind,
                                            status, dead_lettered_at, raw_body, parse_error,
                                            properties)
         SELECT 'k' || i, 'q', 'h' || (i % 2), 'poison E' || (i % 3), 'poison',
                CASE WHEN i % 5 = 0 THEN 'purged' ELSE 'pending' END, now(), '\\x00', 'x', '{{}}'
         FROM generate_series(1, 100) AS i;"
    ))
    .execute(&env.pool)
    .await
    .expect("a version 1 store with rows");
    store.migrate(&env.pool).await.expect("upgrade");
    let total: i64 = sqlx::query_scalar(&format!(
        "SELECT sum(count)::bigint FROM {schema}.dead_letter_groups"
    ))
    .fetch_one(&env.pool)
    .await
    .expect("counted");
    assert_eq!(total, 100);
    assert_counts_exact(&env).await;
}
