//! The ingester moves dead letters into the store: killed (SIGKILL) in the middle of a stream of
//! 10,000 records, then run again, it loses none and stores none twice; junk published into the
//! dead-letter queue is stored as unparsed, byte for byte.

use std::collections::HashSet;
use std::process::Stdio;

use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::BasicProperties;
use serde_json::json;
use worker_core::DeadLetterRecord;
use worker_tests::{eventually, TestEnv, PATIENCE};

const RECORDS: usize = 10_000;

/// `event_id, fingerprint, parse_error, raw_body` of a stored row.
type Row = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<Vec<u8>>,
);

fn ingester(env: &TestEnv, until_empty: bool) -> tokio::process::Child {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_cli_worker"));
    command.envs(env.worker_env()).args(["dlq", "ingest"]);
    if until_empty {
        command.arg("--until-empty");
    }
    command
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the ingester")
}

async fn stored(env: &TestEnv) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM \"{}\".dead_letters", env.id))
        .fetch_one(&env.pool)
        .await
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_ingester_loses_nothing_and_stores_nothing_twice() {
    let env = TestEnv::new().await;
    // A real record to copy: one poison event through the worker.
    let worker = worker_rabbitmq::Worker::builder()
        .handler(worker_tests::handlers::scripted)
        .migrations(TestEnv::migrator())
        .settings(env.settings())
        .start()
        .await
        .expect("worker starts");
    env.publish_json("Scripted", "evt_template", json!({"poison": true}))
        .await;
    let (properties, template) = env
        .wait_dead_letters("scripted", 1)
        .await
        .pop()
        .expect("a record");
    worker.shutdown().await.expect("shutdown");

    let dlq = format!("{}.dlq", env.queue("scripted"));
    let mut confirms = Vec::new();
    let publish = |body: Vec<u8>, properties: BasicProperties| {
        let channel = env.channel.clone();
        let dlq = dlq.clone();
        async move {
            let confirm = channel
                .basic_publish(
                    "".into(),
                    dlq.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    properties,
                )
                .await
                .expect("publish");
            // The confirm is awaited with the others, below.
            vec![confirm]
        }
    };
    for i in 0..RECORDS {
        let mut record: DeadLetterRecord = template.clone();
        record.original_message.id = Some(format!("evt_{i}"));
        record.failure_metadata.trace_id = format!("{i:032x}");
        let body = serde_json::to_vec(&record).expect("record");
        let properties = properties
            .clone()
            .with_message_id(ShortString::from(format!("evt_{i}")));
        confirms.extend(publish(body, properties).await);
    }
    let junk: Vec<Vec<u8>> = vec![
        b"not json at all".to_vec(),
        vec![0xff, 0xfe, 0x00, 0x1b],
        br#"{"looks": "like json", "but": "is not a record"}"#.to_vec(),
    ];
    for body in &junk {
        let properties = BasicProperties::default()
            .with_message_id(ShortString::from("junk"))
            .with_delivery_mode(2);
        confirms.extend(publish(body.clone(), properties).await);
    }
    for confirm in confirms {
        confirm.await.expect("confirmed");
    }
    let total = RECORDS + junk.len();
    assert_eq!(env.depth(&dlq).await as usize, total);

    // Kill the first ingester once it stored some, well before it is done.
    let mut first = ingester(&env, false);
    eventually("the ingester stores its first batches", || async {
        stored(&env).await > 0
    })
    .await;
    first.kill().await.expect("SIGKILL the ingester");
    let at_kill = stored(&env).await as usize;
    assert!(
        at_kill < total,
        "the ingester was killed mid-stream ({at_kill} of {total} stored)"
    );

    let started = std::time::Instant::now();
    let second = ingester(&env, true);
    let output = tokio::time::timeout(PATIENCE, second.wait_with_output())
        .await
        .expect("the second ingester finishes")
        .expect("wait");
    assert!(output.status.success(), "{output:?}");
    println!(
        "killed at {at_kill} of {total} stored; the second run stored the rest in {:?} \
         (process start and a second of idle wait included)",
        started.elapsed()
    );
    assert_eq!(env.depth(&dlq).await, 0, "the dead-letter queue is empty");

    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT event_id, fingerprint, parse_error, raw_body FROM \"{}\".dead_letters",
        env.id
    ))
    .fetch_all(&env.pool)
    .await
    .expect("rows");
    assert_eq!(rows.len(), total, "every message stored exactly once");
    let records: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM \"{}\".dead_letters \
         WHERE record->'originalMessage'->>'id' = event_id AND raw_body IS NULL",
        env.id
    ))
    .fetch_one(&env.pool)
    .await
    .expect("count");
    assert_eq!(
        records as usize, RECORDS,
        "each record kept whole, as JSONB"
    );
    let parsed: Vec<_> = rows.iter().filter(|r| r.2.is_none()).collect();
    let ids: HashSet<_> = parsed.iter().filter_map(|r| r.0.clone()).collect();
    assert_eq!(ids.len(), RECORDS, "each record once, by event id");
    let group = worker_rabbitmq::dlq::fingerprint(&template);
    assert!(
        parsed
            .iter()
            .all(|r| r.1.as_deref() == Some(group.as_str())),
        "the fingerprint is computed at ingest: {group}"
    );
    let unparsed: HashSet<Vec<u8>> = rows
        .iter()
        .filter(|r| r.2.is_some())
        .filter_map(|r| r.3.clone())
        .collect();
    assert_eq!(
        unparsed,
        junk.into_iter().collect::<HashSet<_>>(),
        "junk kept byte for byte, marked unparsed"
    );
}
