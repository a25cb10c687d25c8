//! One implementation of the rules: the same scenario (success, a duplicate, a retry that
//! succeeds, poison, retries exhausted, bad input) runs through the in-memory test harness and
//! through a real worker on RabbitMQ, and the outcomes and records must be the same.
//!
//! Each side has its own [`TestEnv`] (its own Postgres schema), so the two databases never meet;
//! both publish byte-identical messages (same ids, bodies, properties, headers and `traceparent`s,
//! so both sides run every event under the same trace id) to the same exchange name, with the same
//! consumer name and retry policy. Compared:
//!
//! - per event id, the deliveries in order: outcome, the attempt it was, and for a dead letter the
//!   error kind (RabbitMQ: an observer pairing each `received` with its `settled`);
//! - the dead-letter records, field by field, in the form the DLQ carries (JSON);
//! - the rows the handler and the framework wrote: the attempts the handler saw (with their trace
//!   ids), the effects, and the dedup rows.
//!
//! What is set or normalized, and why (nothing else is):
//!
//! - the harness is told the worker's exchange name (`.exchange`), its consumer name and retry
//!   overrides come from the same `TestEnv` configuration: configuration, not behaviour;
//! - the harness's records go through the JSON a DLQ message carries (times to milliseconds), as
//!   the worker's were read from its DLQ;
//! - `firstFailedAt` and `lastFailedAt` are set aside: wall clock against a virtual clock. Each
//!   side is checked on its own instead (one failure: equal; exhausted: at least the backoff
//!   apart);
//! - table rows leave out `at`, `processed_at` and serial ids (when and in which interleaving
//!   they were written), and records and rows are sorted (the worker's order is timing);
//! - the second copy of the duplicate is published once the first has settled: the harness does
//!   not model two copies racing for one dedup row.
//!
//! Not comparable: the harness exposes the record, not the AMQP properties of the dead-letter
//! message carrying it, and the worker's retry jitter is random (the harness's is seeded).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;
use serde_json::Value;
use worker_core::testing::{Outcome, TestHarness, TestMessage};
use worker_core::transport::message::{HeaderValue, Headers, Properties};
use worker_core::transport::retry::ATTEMPTS_HEADER;
use worker_core::{DeadLetterRecord, ErrorKind, InboundMessage, Observer, Settlement};
use worker_tests::handlers::scripted;
use worker_tests::{eventually, TestEnv};

const HANDLER: &str = "scripted";
const EVENT_TYPE: &str = "Scripted";

/// One delivery as both sides report it: outcome (the harness's names), the attempt it was, and
/// the error kind of a dead letter.
type Step = (&'static str, u32, Option<ErrorKind>);

/// Per event id (`None`: the message without one), its deliveries in order.
type Steps = BTreeMap<Option<String>, Vec<Step>>;

/// A message exactly as a producer publishes it, to either side.
#[derive(Debug, Clone)]
struct Published {
    body: Vec<u8>,
    properties: Properties,
}

impl Published {
    /// Event `index` of the scenario: its own `traceparent` (trace id derived from `index`), a
    /// correlation id, two typed producer headers and most other properties, persistent.
    fn new(index: u64, id: Option<&str>, body: &[u8], json: bool) -> Self {
        let mut headers = Headers::new();
        headers.insert(
            "traceparent".into(),
            HeaderValue::string(format!(
                "00-4bf92f3577b34da6a3ce9290{index:08x}-00f067aa0ba9{index:04x}-01"
            )),
        );
        headers.insert("tenant".into(), HeaderValue::string("acme"));
        headers.insert("priority-class".into(), HeaderValue::I32(5));
        Self {
            body: body.to_vec(),
            properties: Properties {
                message_id: id.map(Into::into),
                kind: Some(EVENT_TYPE.into()),
                content_type: json.then(|| "application/json".into()),
                content_encoding: Some("identity".into()),
                correlation_id: Some(format!("corr-{index}")),
                timestamp: Some(1_770_000_000 + index),
                delivery_mode: Some(2),
                priority: Some(3),
                reply_to: Some("replies".into()),
                expiration: None,
                // The broker checks it against the connection's user.
                user_id: None,
                app_id: Some("parity-producer".into()),
                headers,
            },
        }
    }

    /// With a per-message TTL (long enough never to expire here).
    fn expiring(mut self) -> Self {
        self.properties.expiration = Some("600000".into());
        self
    }

    fn trace_id(&self) -> String {
        let traceparent = self.properties.headers["traceparent"]
            .as_str()
            .expect("text");
        traceparent[3..35].to_owned()
    }

    fn to_harness(&self) -> TestMessage {
        TestMessage::raw(EVENT_TYPE, self.body.clone()).properties(self.properties.clone())
    }

    /// The same properties for lapin (every field is named, so a new property cannot be dropped
    /// silently; only the header types this scenario uses).
    fn to_amqp(&self) -> BasicProperties {
        let Properties {
            message_id,
            kind,
            content_type,
            content_encoding,
            correlation_id,
            timestamp,
            delivery_mode,
            priority,
            reply_to,
            expiration,
            user_id,
            app_id,
            headers,
        } = &self.properties;
        assert!(user_id.is_none(), "the broker would reject it");
        let short = |s: &String| ShortString::from(s.as_str());
        let mut out = BasicProperties::default();
        if let Some(v) = message_id {
            out = out.with_message_id(short(v));
        }
        if let Some(v) = kind {
            out = out.with_type(short(v));
        }
        if let Some(v) = content_type {
            out = out.with_content_type(short(v));
        }
        if let Some(v) = content_encoding {
            out = out.with_content_encoding(short(v));
        }
        if let Some(v) = correlation_id {
            out = out.with_correlation_id(short(v));
        }
        if let Some(v) = timestamp {
            out = out.with_timestamp(*v);
        }
        if let Some(v) = delivery_mode {
            out = out.with_delivery_mode(*v);
        }
        if let Some(v) = priority {
            out = out.with_priority(*v);
        }
        if let Some(v) = reply_to {
            out = out.with_reply_to(short(v));
        }
        if let Some(v) = expiration {
            out = out.with_expiration(short(v));
        }
        if let Some(v) = app_id {
            out = out.with_app_id(short(v));
        }
        let mut table = FieldTable::default();
        for (name, value) in headers {
            let value = match value {
                HeaderValue::LongString(bytes) => {
                    AMQPValue::LongString(LongString::from(&bytes[..]))
                }
                HeaderValue::I32(v) => AMQPValue::LongInt(*v),
                other => panic!("the scenario uses no {other:?} header"),
            };
            table.insert(ShortString::from(name.as_str()), value);
        }
        out.with_headers(table)
    }
}

/// The scenario: the first-phase messages, and the second copy of `evt_dup` (published once the
/// first copy has settled, see the test).
fn scenario() -> (Vec<Published>, Published) {
    let dup = Published::new(2, Some("evt_dup"), b"{}", true);
    let first = vec![
        Published::new(1, Some("evt_ok"), b"{}", true),
        dup.clone(),
        Published::new(3, Some("evt_flaky"), br#"{"failTimes": 1}"#, true),
        Published::new(4, Some("evt_poison"), br#"{"poison": true}"#, true),
        // Retried through the delay queues, where the worker sets its own TTL.
        Published::new(5, Some("evt_exhausted"), br#"{"failTimes": 99}"#, true).expiring(),
        Published::new(6, Some("evt_not_json"), b"this is not json", false),
        Published::new(7, None, b"{}", true),
    ];
    (first, dup)
}

/// What the rules say happens to each event of the scenario (`max`: the handler's attempts).
fn expected(max: u32) -> Steps {
    let poison = Some(ErrorKind::Poison);
    let mut exhausted: Vec<Step> = (1..max).map(|a| ("retry", a, None)).collect();
    exhausted.push(("dead_letter", max, Some(ErrorKind::Retryable)));
    [
        (Some("evt_ok"), vec![("processed", 1, None)]),
        (
            Some("evt_dup"),
            vec![("processed", 1, None), ("duplicate", 1, None)],
        ),
        (
            Some("evt_flaky"),
            vec![("retry", 1, None), ("processed", 2, None)],
        ),
        (Some("evt_poison"), vec![("dead_letter", 1, poison)]),
        (Some("evt_exhausted"), exhausted),
        (Some("evt_not_json"), vec![("dead_letter", 1, poison)]),
        (None, vec![("dead_letter", 1, poison)]),
    ]
    .into_iter()
    .map(|(id, steps)| (id.map(str::to_owned), steps))
    .collect()
}

/// The worker's side of [`Step`]s: the attempt of each delivery (from its retry headers, when it
/// arrives) paired with how it was settled.
#[derive(Debug, Clone, Default)]
struct Recorder(Arc<Mutex<Recorded>>);

#[derive(Debug, Default)]
struct Recorded {
    /// Attempts of the deliveries received and not settled yet, per (handler, event id).
    in_flight: HashMap<(String, Option<String>), VecDeque<u32>>,
    /// Every settlement, in order: (event id, step, acked).
    settled: Vec<(Option<String>, Step, bool)>,
}

impl Observer for Recorder {
    fn received(&self, handler: &str, message: &InboundMessage) {
        // A retry copy carries the failures so far; the pipeline clamps forged counts, which
        // this scenario never sends, so failures + 1 is the attempt.
        let failures = message
            .properties
            .headers
            .get(ATTEMPTS_HEADER)
            .and_then(HeaderValue::as_i128)
            .unwrap_or(0);
        let key = (handler.to_owned(), message.properties.message_id.clone());
        self.0
            .lock()
            .expect("not poisoned")
            .in_flight
            .entry(key)
            .or_default()
            .push_back(u32::try_from(failures + 1).expect("small"));
    }

    fn settled(&self, s: &Settlement<'_>) {
        let outcome = match s.outcome {
            // The worker's metric names, in the harness's words.
            "ok" => "processed",
            "give_back" => "given_back",
            other => other,
        };
        let mut recorded = self.0.lock().expect("not poisoned");
        let key = (s.handler.to_owned(), s.event_id.map(str::to_owned));
        // 0: settled without being received (the comparison then fails and shows it).
        let attempt = recorded
            .in_flight
            .get_mut(&key)
            .and_then(VecDeque::pop_front)
            .unwrap_or(0);
        recorded
            .settled
            .push((key.1, (outcome, attempt, s.error_kind), s.acked));
    }
}

impl Recorder {
    fn steps(&self) -> Steps {
        let mut steps = Steps::new();
        for (id, step, _) in &self.0.lock().expect("not poisoned").settled {
            steps.entry(id.clone()).or_default().push(*step);
        }
        steps
    }

    fn settled(&self, id: &str) -> usize {
        self.steps().get(&Some(id.to_owned())).map_or(0, Vec::len)
    }
}

fn harness_steps(harness: &TestHarness) -> Steps {
    let mut steps = Steps::new();
    for delivery in harness.deliveries() {
        assert_eq!(delivery.handler, HANDLER);
        let kind = delivery
            .outcome
            .dead_letter()
            .map(|r| r.failure_metadata.error_kind);
        steps.entry(delivery.event_id.clone()).or_default().push((
            delivery.outcome.name(),
            delivery.attempt,
            kind,
        ));
    }
    steps
}

/// The rows the handler and the framework wrote, without what only says when or in which order
/// they were written (`at`, `processed_at`, serial ids: the two sides interleave events
/// differently and run at different times).
#[derive(Debug, PartialEq)]
struct Rows {
    /// (event id, handler, attempt, trace id) of every handler call.
    attempts: Vec<(String, String, i32, String)>,
    /// (event id, handler) of every committed effect.
    effects: Vec<(String, String)>,
    /// (handler, event id) of the dedup table.
    processed: Vec<(String, String)>,
}

async fn rows(env: &TestEnv) -> Rows {
    let attempts = sqlx::query_as(
        "SELECT event_id, handler, attempt, trace_id FROM attempts ORDER BY event_id, attempt",
    )
    .fetch_all(&env.pool)
    .await
    .expect("attempts");
    let effects = sqlx::query_as("SELECT event_id, handler FROM effects ORDER BY event_id")
        .fetch_all(&env.pool)
        .await
        .expect("effects");
    let processed = sqlx::query_as(&format!(
        "SELECT handler, event_id FROM {}.processed_events ORDER BY handler, event_id",
        env.config.db_schema.quoted()
    ))
    .fetch_all(&env.pool)
    .await
    .expect("processed_events");
    Rows {
        attempts,
        effects,
        processed,
    }
}

/// Sorted by event id, then error: the DLQ's order depends on the worker's timing.
fn sorted(mut records: Vec<DeadLetterRecord>) -> Vec<DeadLetterRecord> {
    records.sort_by(|a, b| {
        (&a.original_message.id, &a.failure_metadata.last_error)
            .cmp(&(&b.original_message.id, &b.failure_metadata.last_error))
    });
    records
}

/// Every path where two JSON values differ, with both values.
fn differences(path: &str, mq: &Value, harness: &Value, out: &mut Vec<String>) {
    match (mq, harness) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                let null = Value::Null;
                differences(
                    &format!("{path}.{key}"),
                    a.get(key).unwrap_or(&null),
                    b.get(key).unwrap_or(&null),
                    out,
                );
            }
        }
        (a, b) if a != b => out.push(format!("{path}: worker {a} / harness {b}")),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_harness_and_the_worker_apply_the_same_rules() {
    let (first, dup) = scenario();

    // --- Through RabbitMQ -------------------------------------------------------------------
    let mq = TestEnv::new().await;
    let recorder = Recorder::default();
    let worker = worker_rabbitmq::Worker::builder()
        .handler(scripted)
        .migrations(TestEnv::migrator())
        .settings(mq.settings())
        .observer(recorder.clone())
        .start()
        .await
        .unwrap();
    for message in &first {
        mq.publish(EVENT_TYPE, &message.body, message.to_amqp())
            .await;
    }
    // The second copy only once the first has settled: the harness delivers one at a time, so
    // two copies of one event never race for the dedup row there (concurrency is not what is
    // compared here).
    eventually("the first copy of evt_dup settles", || async {
        recorder.settled("evt_dup") == 1
    })
    .await;
    mq.publish(EVENT_TYPE, &dup.body, dup.to_amqp()).await;
    let mq_records = mq.wait_dead_letters(HANDLER, 4).await;
    eventually(
        "evt_ok, evt_flaky and both copies of evt_dup settle",
        || async {
            recorder.settled("evt_ok") == 1
                && recorder.settled("evt_flaky") == 2
                && recorder.settled("evt_dup") == 2
        },
    )
    .await;
    // Waits for the deliveries in flight: every settlement is recorded after this.
    worker.shutdown().await.unwrap();
    assert!(
        mq.take_dead_letters(HANDLER).await.is_empty(),
        "no dead letter beyond the four"
    );
    assert_eq!(
        mq.depth(&mq.queue(HANDLER)).await,
        0,
        "nothing left to deliver"
    );
    let mq_steps = recorder.steps();
    let unacked: Vec<_> = recorder
        .0
        .lock()
        .unwrap()
        .settled
        .iter()
        .filter(|(_, _, acked)| !acked)
        .cloned()
        .collect();
    assert!(unacked.is_empty(), "every delivery acked: {unacked:?}");
    let mq_records = sorted(mq_records.into_iter().map(|(_, record)| record).collect());
    let mq_rows = rows(&mq).await;

    // --- Through the harness ----------------------------------------------------------------
    let local = TestEnv::new().await;
    TestEnv::migrator()
        .run(&local.pool)
        .await
        .expect("the test handlers' tables");
    let mut harness = TestHarness::builder()
        .handler(scripted)
        .pool(local.pool.clone())
        // The same consumer name and retry overrides as the worker's; its own schema.
        .config(local.config.clone())
        // The records name the exchange the producer published to: the worker's.
        .exchange(mq.broker.exchange.clone())
        .seed(7)
        .build()
        .await
        .expect("harness");
    assert_eq!(local.config.consumer, mq.config.consumer);
    assert_eq!(local.config.retry, mq.config.retry);
    for message in &first {
        assert_eq!(harness.publish(message.to_harness()), 1);
    }
    harness.run_until_idle().await;
    harness.publish(dup.to_harness());
    harness.run_until_idle().await;
    assert_eq!(harness.waiting(), 0);
    let max = harness.spec(HANDLER).expect("spec").retry.max_attempts;
    assert_eq!(
        max, 3,
        "the handler's retry = 3 (TestEnv overrides no maximum)"
    );
    let harness_steps = harness_steps(&harness);
    let harness_rows = rows(&local).await;
    // The harness's records in the form a DLQ message carries them (JSON, times in
    // milliseconds), which is how the worker's were read.
    let harness_records = sorted(
        harness
            .dead_letters(HANDLER)
            .into_iter()
            .map(|record| {
                serde_json::from_slice(&serde_json::to_vec(record).expect("serialize"))
                    .expect("deserialize")
            })
            .collect(),
    );
    assert!(harness
        .deliveries()
        .iter()
        .all(|d| !matches!(d.outcome, Outcome::GivenBack { .. })));

    // --- Outcomes ---------------------------------------------------------------------------
    assert_eq!(harness_steps, mq_steps, "the harness decides as the worker");
    assert_eq!(mq_steps, expected(max), "the worker follows the rules");

    // --- The handler's and the framework's rows ---------------------------------------------
    let traces: BTreeMap<Option<String>, String> = first
        .iter()
        .map(|m| (m.properties.message_id.clone(), m.trace_id()))
        .collect();
    for (event_id, _, _, trace_id) in &mq_rows.attempts {
        assert_eq!(
            Some(trace_id),
            traces.get(&Some(event_id.clone())),
            "{event_id} ran under its producer's trace"
        );
    }
    let one_each = |ids: &[&str]| -> Vec<(String, String)> {
        ids.iter()
            .map(|id| (id.to_string(), HANDLER.to_owned()))
            .collect()
    };
    assert_eq!(
        mq_rows.effects,
        one_each(&["evt_dup", "evt_flaky", "evt_ok"]),
        "one effect per processed event"
    );
    assert_eq!(
        mq_rows.processed,
        one_each(&["evt_dup", "evt_flaky", "evt_ok"])
            .into_iter()
            .map(|(id, handler)| (handler, id))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        mq_rows
            .attempts
            .iter()
            .map(|(id, _, attempt, _)| (id.as_str(), *attempt))
            .collect::<Vec<_>>(),
        [
            ("evt_dup", 1),
            ("evt_exhausted", 1),
            ("evt_exhausted", 2),
            ("evt_exhausted", 3),
            ("evt_flaky", 1),
            ("evt_flaky", 2),
            ("evt_ok", 1),
            ("evt_poison", 1),
        ],
        "the handler ran once per attempt, never for bad input or the duplicate"
    );
    assert_eq!(
        harness_rows, mq_rows,
        "the harness writes what the worker writes"
    );

    // --- Dead-letter records ----------------------------------------------------------------
    assert_eq!(mq_records.len(), 4);
    assert_eq!(harness_records.len(), 4);
    let backoff: std::time::Duration = (1..max)
        .map(|failures| {
            harness
                .spec(HANDLER)
                .expect("spec")
                .retry
                .base_delay(failures)
        })
        .sum();
    let mut found = Vec::new();
    for (mq_record, harness_record) in mq_records.iter().zip(&harness_records) {
        let id = mq_record.original_message.id.clone();
        // The times cannot match (wall clock against the virtual clock started when the harness
        // was built): each side must only be consistent with the attempts it made.
        for (side, record) in [("worker", mq_record), ("harness", harness_record)] {
            let meta = &record.failure_metadata;
            let span = (meta.last_failed_at - meta.first_failed_at)
                .to_std()
                .unwrap_or_else(|_| panic!("{side} {id:?}: first failure after the last"));
            if meta.attempts == 1 {
                assert_eq!(
                    span,
                    std::time::Duration::ZERO,
                    "{side} {id:?}: one failure"
                );
            } else {
                assert!(
                    span >= backoff,
                    "{side} {id:?}: {span:?} between the failures, less than the backoff {backoff:?}"
                );
            }
        }
        let normalized = |record: &DeadLetterRecord| {
            let mut record = record.clone();
            let epoch = DateTime::<Utc>::UNIX_EPOCH;
            record.failure_metadata.first_failed_at = epoch;
            record.failure_metadata.last_failed_at = epoch;
            serde_json::to_value(record).expect("json")
        };
        differences(
            &format!("{id:?}"),
            &normalized(mq_record),
            &normalized(harness_record),
            &mut found,
        );
    }
    assert!(
        found.is_empty(),
        "the records differ beyond their times:\n{}",
        found.join("\n")
    );
    // And they are the records the rules call for.
    let by_id: BTreeMap<Option<&str>, &DeadLetterRecord> = mq_records
        .iter()
        .map(|r| (r.original_message.id.as_deref(), r))
        .collect();
    for (id, kind, attempts, error) in [
        (
            Some("evt_poison"),
            ErrorKind::Poison,
            1,
            "ScriptedPoison: this event can never succeed".to_owned(),
        ),
        (
            Some("evt_exhausted"),
            ErrorKind::Retryable,
            max,
            format!("ScriptedFailure: attempt {max} fails"),
        ),
    ] {
        let meta = &by_id[&id].failure_metadata;
        assert_eq!(
            (meta.error_kind, meta.attempts, &meta.last_error),
            (kind, attempts, &error),
            "{id:?}"
        );
    }
    let not_json = &by_id[&Some("evt_not_json")].failure_metadata;
    assert!(
        not_json
            .last_error
            .starts_with("payload of Scripted is not valid JSON"),
        "{}",
        not_json.last_error
    );
    assert!(by_id[&None]
        .failure_metadata
        .last_error
        .starts_with("message has no message_id property"));
    for (id, record) in &by_id {
        let message = &record.original_message;
        assert_eq!(message.exchange, mq.broker.exchange, "{id:?}");
        assert_eq!(message.routing_key, EVENT_TYPE, "{id:?}");
        assert_eq!(record.failure_metadata.handler, HANDLER);
        assert_eq!(record.failure_metadata.consumer, mq.config.consumer);
        assert_eq!(
            Some(&record.failure_metadata.trace_id),
            traces.get(&id.map(str::to_owned)),
            "{id:?}: the producer's trace"
        );
        let published = first
            .iter()
            .find(|m| m.properties.message_id.as_deref() == *id)
            .expect("published");
        // Every property as published but the TTL, which a record never keeps (a replay must
        // not expire).
        let as_published = Properties {
            expiration: None,
            ..published.properties.clone()
        };
        assert_eq!(message.properties, as_published, "{id:?}: as published");
        assert_eq!(message.original_body().unwrap(), published.body, "{id:?}");
    }
}
