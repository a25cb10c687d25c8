//! `dlq list | show | stats | purge` against real dead letters: filters, `--json`, grouping,
//! and browsing that leaves every entry where it was.

use chrono::{Duration, Utc};
use lapin::options::BasicPublishOptions;
use lapin::types::{FieldTable, ShortString};
use lapin::BasicProperties;
use serde_json::{json, Value};
use worker_core::DeadLetterRecord;
use worker_rabbitmq::cli::CliOutput;
use worker_rabbitmq::{Worker, WorkerBuilder};
use worker_tests::handlers::{scripted, scripted_plain};
use worker_tests::{eventually, text, TestEnv};

fn builder(env: &TestEnv) -> WorkerBuilder {
    Worker::builder()
        .handler(scripted)
        .handler(scripted_plain)
        .migrations(TestEnv::migrator())
        .settings(env.settings())
}

async fn cli(env: &TestEnv, args: &[&str]) -> CliOutput {
    let args = std::iter::once("worker").chain(args.iter().copied());
    builder(env).run_with_args(args).await
}

fn lines(output: &CliOutput) -> Vec<Value> {
    output
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The event ids, sorted: the worker dead-letters concurrent events in no fixed order.
fn sorted_ids(output: &CliOutput) -> Vec<String> {
    let mut ids = ids(output);
    ids.sort();
    ids
}

fn ids(output: &CliOutput) -> Vec<String> {
    lines(output)
        .iter()
        .map(|v| {
            v["originalMessage"]["id"]
                .as_str()
                .unwrap_or("-")
                .to_owned()
        })
        .collect()
}

async fn publish_traced(env: &TestEnv, id: &str, trace: &str, body: &[u8]) {
    let mut headers = FieldTable::default();
    headers.insert(
        ShortString::from("traceparent"),
        text(&format!("00-{trace}-00f067aa0ba902b7-01")),
    );
    let properties = BasicProperties::default()
        .with_message_id(ShortString::from(id))
        .with_headers(headers);
    env.publish("Scripted", body, properties).await;
}

const TRACE_A1: &str = "aaaa1111000000000000000000000001";
const TRACE_A2: &str = "aaaa2222000000000000000000000002";
const TRACE_B: &str = "bbbb0000000000000000000000000003";

/// Three real dead letters per handler (two poison, one exhausted), plus one old record
/// dead-lettered two days ago into `scripted.dlq`.
async fn dead_letters(env: &TestEnv) {
    let worker = builder(env).start().await.expect("worker starts");
    publish_traced(env, "evt_p1", TRACE_A1, br#"{"poison": true}"#).await;
    publish_traced(env, "evt_p2", TRACE_A2, br#"{"poison": true}"#).await;
    publish_traced(env, "evt_tired", TRACE_B, br#"{"failTimes": 99}"#).await;
    for handler in ["scripted", "scripted-plain"] {
        let dlq = format!("{}.dlq", env.queue(handler));
        eventually(&format!("3 records in {dlq}"), || async {
            env.depth(&dlq).await >= 3
        })
        .await;
    }
    worker.shutdown().await.expect("shutdown");
    // An old record, as an earlier incident would have left it.
    let mut old: DeadLetterRecord = serde_json::from_value(json!({
        "originalMessage": {"id": "evt_old", "type": "Scripted", "payload": {"poison": true},
            "routingKey": "Scripted", "exchange": env.broker.exchange, "headers": {},
            "body": "{\"poison\": true}", "bodyEncoding": "utf8",
            "properties": {"messageId": "evt_old", "headers": {}}},
        "failureMetadata": {"attempts": 1, "firstFailedAt": "2026-01-01T00:00:00Z",
            "lastFailedAt": "2026-01-01T00:00:00Z", "lastError": "OldBug: row 17 of batch 99 is corrupt",
            "errorKind": "poison", "consumer": "w", "handler": "scripted",
            "traceId": "cccc0000000000000000000000000004"}
    }))
    .expect("record");
    old.failure_metadata.first_failed_at = Utc::now() - Duration::days(2);
    old.failure_metadata.last_failed_at = Utc::now() - Duration::days(2);
    env.channel
        .basic_publish(
            "".into(),
            format!("{}.dlq", env.queue("scripted")).into(),
            BasicPublishOptions::default(),
            &serde_json::to_vec(&old).expect("json"),
            BasicProperties::default().with_message_id(ShortString::from("evt_old")),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_json_and_browsing_changes_nothing() {
    let env = TestEnv::new().await;
    dead_letters(&env).await;
    let dlq = format!("{}.dlq", env.queue("scripted"));

    let first = cli(&env, &["dlq", "list", "--json"]).await;
    assert_eq!(first.code, 0, "{}", first.stderr);
    let all = ids(&first);
    assert_eq!(all.len(), 7, "{}", first.stdout);
    // Browsing again (several times) gives the same entries in the same order, byte for byte.
    for _ in 0..3 {
        let again = cli(&env, &["dlq", "list", "--json"]).await;
        assert_eq!(again.stdout, first.stdout);
    }
    assert_eq!(env.depth(&dlq).await, 4);
    // --json: one full record per line with the contract's field names.
    for line in lines(&first) {
        serde_json::from_value::<DeadLetterRecord>(line.clone()).expect("a record");
        for field in [
            "attempts",
            "firstFailedAt",
            "lastFailedAt",
            "lastError",
            "errorKind",
            "consumer",
            "handler",
            "traceId",
        ] {
            assert!(line["failureMetadata"].get(field).is_some(), "{field}");
        }
    }

    // Trace id prefix, case-insensitive; across handlers unless --handler narrows it.
    let by_trace = cli(&env, &["dlq", "list", "--json", "--trace-id", "AAAA"]).await;
    assert_eq!(
        sorted_ids(&by_trace),
        ["evt_p1", "evt_p1", "evt_p2", "evt_p2"]
    );
    assert_eq!(by_trace.code, 0, "{by_trace:?}");
    let none = cli(&env, &["dlq", "list", "--trace-id", "ffff0000"]).await;
    assert_eq!(
        none.code, 3,
        "a listing that matches nothing exits 3: {none:?}"
    );
    assert!(none.stdout.starts_with("no dead letters match"), "{none:?}");
    let one = cli(
        &env,
        &[
            "dlq",
            "list",
            "--json",
            "--trace-id",
            "aaaa2",
            "--handler",
            "scripted-plain",
        ],
    )
    .await;
    let one = lines(&one);
    assert_eq!(one.len(), 1);
    assert_eq!(one[0]["failureMetadata"]["handler"], "scripted-plain");
    assert_eq!(one[0]["failureMetadata"]["traceId"], TRACE_A2);
    // Handler, error kind, since, event id, limit.
    let scripted_only = cli(&env, &["dlq", "list", "--json", "--handler", "scripted"]).await;
    assert_eq!(
        sorted_ids(&scripted_only),
        ["evt_old", "evt_p1", "evt_p2", "evt_tired"]
    );
    assert_eq!(
        ids(&scripted_only).last().map(String::as_str),
        Some("evt_old"),
        "queue order"
    );
    let retryable = cli(
        &env,
        &["dlq", "list", "--json", "--error-kind", "retryable"],
    )
    .await;
    assert_eq!(ids(&retryable), ["evt_tired", "evt_tired"]);
    let recent = cli(
        &env,
        &[
            "dlq",
            "list",
            "--json",
            "--since",
            "1d",
            "--handler",
            "scripted",
        ],
    )
    .await;
    assert_eq!(sorted_ids(&recent), ["evt_p1", "evt_p2", "evt_tired"]);
    let limited = cli(&env, &["dlq", "list", "--json", "--limit", "2"]).await;
    assert_eq!(ids(&limited), all[..2], "the first two in queue order");

    // For people: a table with the error and the trace id.
    let table = cli(&env, &["dlq", "list", "--event-id", "evt_tired"]).await;
    assert_eq!(table.code, 0);
    assert!(table.stdout.starts_with("HANDLER"), "{}", table.stdout);
    assert!(
        table.stdout.contains("ScriptedFailure: attempt 3 fails"),
        "{}",
        table.stdout
    );
    assert!(table.stdout.contains(TRACE_B), "{}", table.stdout);
    assert!(
        !table.stdout.contains('\x1b'),
        "no colour when not a terminal"
    );

    // Unknown handler: a usage error that names the real ones.
    let unknown = cli(&env, &["dlq", "list", "--handler", "nope"]).await;
    assert_eq!(unknown.code, 2);
    assert!(
        unknown.stderr.contains("scripted-plain"),
        "{}",
        unknown.stderr
    );

    // Nothing above changed the queue: same entries, same order, same content.
    let taken: Vec<Value> = env
        .take_dead_letters("scripted")
        .await
        .into_iter()
        .map(|(_, r)| serde_json::to_value(r).expect("json"))
        .collect();
    assert_eq!(taken, lines(&scripted_only));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_stats_and_purge() {
    let env = TestEnv::new().await;
    dead_letters(&env).await;
    let dlq = format!("{}.dlq", env.queue("scripted"));

    let show = cli(&env, &["dlq", "show", "evt_tired", "--handler", "scripted"]).await;
    assert_eq!(show.code, 0, "{}", show.stderr);
    for expected in [
        "ScriptedFailure: attempt 3 fails",
        "retryable",
        "\"failTimes\": 99",
        TRACE_B,
        "traceparent",
    ] {
        assert!(
            show.stdout.contains(expected),
            "{expected} in\n{}",
            show.stdout
        );
    }
    let missing = cli(&env, &["dlq", "show", "evt_nope"]).await;
    assert_eq!(missing.code, 3, "{}", missing.stderr);

    let stats = cli(&env, &["dlq", "stats", "--json"]).await;
    assert_eq!(stats.code, 0, "{}", stats.stderr);
    let stats = &lines(&stats)[0];
    let handlers = stats["handlers"].as_array().expect("handlers");
    assert!(
        handlers.contains(&json!({"handler": "scripted", "count": 4, "poison": 3, "retryable": 1}))
    );
    assert!(handlers
        .contains(&json!({"handler": "scripted-plain", "count": 3, "poison": 2, "retryable": 1})));
    let group = |handler: &str, fingerprint: &str| {
        stats["groups"]
            .as_array()
            .expect("groups")
            .iter()
            .find(|g| g["handler"] == handler && g["fingerprint"] == fingerprint)
            .map(|g| g["count"].as_u64().unwrap_or(0))
    };
    assert_eq!(
        group(
            "scripted",
            "poison ScriptedPoison: this event can never succeed"
        ),
        Some(2)
    );
    assert_eq!(
        group("scripted", "retryable ScriptedFailure: attempt N fails"),
        Some(1)
    );
    assert_eq!(
        group("scripted", "poison OldBug: row N of batch N is corrupt"),
        Some(1)
    );
    let table = cli(&env, &["dlq", "stats"]).await;
    assert!(table.stdout.contains("FINGERPRINT"), "{}", table.stdout);

    // Purge: without --yes nothing changes; a selection is required.
    let dry = cli(
        &env,
        &[
            "dlq",
            "purge",
            "--trace-id",
            "aaaa",
            "--handler",
            "scripted",
        ],
    )
    .await;
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert!(dry.stdout.contains("would remove"), "{}", dry.stdout);
    assert_eq!(env.depth(&dlq).await, 4);
    assert_eq!(cli(&env, &["dlq", "purge", "--yes"]).await.code, 2);
    let purged = cli(
        &env,
        &[
            "dlq",
            "purge",
            "--trace-id",
            "aaaa",
            "--handler",
            "scripted",
            "--yes",
        ],
    )
    .await;
    assert_eq!(purged.code, 0, "{}", purged.stderr);
    let left = cli(&env, &["dlq", "list", "--json", "--handler", "scripted"]).await;
    assert_eq!(sorted_ids(&left), ["evt_old", "evt_tired"]);
    let other = cli(
        &env,
        &["dlq", "list", "--json", "--handler", "scripted-plain"],
    )
    .await;
    assert_eq!(ids(&other).len(), 3, "the other handler's DLQ is untouched");
    assert_eq!(
        cli(
            &env,
            &["dlq", "purge", "evt_p1", "--yes", "--handler", "scripted"]
        )
        .await
        .code,
        3
    );
}
