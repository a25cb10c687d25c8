//! The dead-letter store at incident scale: fills a fresh schema's `dead_letters` table with
//! `--records` rows (1,000,000 by default: about an hour of a 500 events/s outage), then times
//! the operator's commands of the example worker's binary as an on-call engineer runs them
//! (`WORKER_DLQ_STORE=on`, process start included, median of `--runs`), measures the ingester
//! (`dlq ingest --until-empty` on `--ingest` records published into a dead-letter queue) and the
//! table's size on disk. Everything it creates (schema, queue) is removed at the end.
//!
//! Build the example first: `cargo build --release -p order-worker`, then
//! `cargo run --release -p worker-bench --bin dlq-scale`.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use clap::Parser;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use rand::Rng;
use sqlx::postgres::PgPoolOptions;
use worker_core::transport::config::DEFAULT_DATABASE_URL;
use worker_core::transport::dead_letter::DeadLetterStore;
use worker_core::transport::dedup::Identifier;
use worker_core::DeadLetterRecord;
use worker_rabbitmq::settings::DEFAULT_AMQP_URL;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The dead-letter store's queries and ingest rate at scale.
#[derive(Debug, Parser)]
#[command(name = "dlq-scale")]
struct Args {
    /// Rows in the table when the commands are timed.
    #[arg(long, default_value_t = 1_000_000)]
    records: u64,
    /// Records published into a dead-letter queue for the ingest measurement.
    #[arg(long, default_value_t = 20_000)]
    ingest: u64,
    /// Runs of each command; the median is reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// The example worker's binary.
    #[arg(long, env = "ORDER_WORKER_BIN")]
    worker_bin: Option<PathBuf>,
    #[arg(long, env = "AMQP_URL", default_value = DEFAULT_AMQP_URL)]
    amqp_url: String,
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
    database_url: String,
}

/// The handler the rows belong to (one of the example's).
const HANDLER: &str = "charge-on-order-placed";
/// Failure groups the rows are spread over.
const GROUPS: u64 = 20;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    let bin = args.worker_bin.clone().unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/order-worker")
    });
    if !bin.exists() {
        return Err(format!(
            "{} not found: build it first with `cargo build --release -p order-worker`",
            bin.display()
        )
        .into());
    }
    let id = format!("dlqscale_{:08x}", rand::thread_rng().gen::<u32>());
    let result = run(&args, &bin, &id).await;
    cleanup(&args, &id).await;
    result
}

async fn run(args: &Args, bin: &PathBuf, id: &str) -> Result<(), BoxError> {
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&args.database_url)
        .await?;
    let schema = Identifier::new(id)?;
    let store = DeadLetterStore::new(schema.clone());
    store.migrate(&pool).await?;
    let template = template();
    serde_json::from_value::<DeadLetterRecord>(template.clone())?;

    let started = Instant::now();
    let chunk = 100_000u64;
    let mut from = 0;
    while from < args.records {
        let to = (from + chunk).min(args.records);
        sqlx::query(&format!(
            "INSERT INTO {table} (record_key, queue, handler, event_id, event_type, trace_id, \
             error_kind, fingerprint, attempts, first_failed_at, last_failed_at, \
             dead_lettered_at, record, properties) \
             SELECT md5('k' || i), 'q', $3, 'evt_' || i, 'OrderPlaced', md5(i::text), 'poison', \
             'poison Err' || chr(65 + (i % {GROUPS})::int) || ': amount -N', 1, \
             now() - (i || ' milliseconds')::interval, now() - (i || ' milliseconds')::interval, \
             now() - (i || ' milliseconds')::interval, \
             jsonb_set(jsonb_set(jsonb_set($4::jsonb, '{{originalMessage,id}}', \
                       to_jsonb('evt_' || i)), \
                       '{{failureMetadata,traceId}}', to_jsonb(md5(i::text))), \
                       '{{failureMetadata,lastError}}', \
                       to_jsonb('Err' || chr(65 + (i % {GROUPS})::int) || ': amount -5')), \
             '{{}}'::jsonb \
             FROM generate_series($1::bigint, $2::bigint - 1) AS i",
            table = format_args!("{}.dead_letters", schema.quoted())
        ))
        .bind(from as i64)
        .bind(to as i64)
        .bind(HANDLER)
        .bind(&template)
        .execute(&pool)
        .await?;
        from = to;
    }
    sqlx::query(&format!("ANALYZE {}.dead_letters", schema.quoted()))
        .execute(&pool)
        .await?;
    let size: i64 = sqlx::query_scalar(&format!(
        "SELECT pg_total_relation_size('{}.dead_letters')",
        schema.quoted()
    ))
    .fetch_one(&pool)
    .await?;
    println!(
        "filled {} rows in {:.1} s; table with indexes: {:.0} MB ({:.0} MB per million rows)",
        args.records,
        started.elapsed().as_secs_f64(),
        size as f64 / 1e6,
        size as f64 / 1e6 / (args.records as f64 / 1e6)
    );

    let probe = args.records / 2 + 7;
    let trace: String = sqlx::query_scalar("SELECT md5($1::bigint::text)")
        .bind(probe as i64)
        .fetch_one(&pool)
        .await?;
    let env = worker_env(args, id);
    let event = format!("evt_{probe}");
    let group = "poison ErrC: amount -N";
    println!("\ncommand (process start included)                     median    runs");
    for (label, cli) in [
        (
            "dlq list --trace-id <8 hex> --json",
            vec!["dlq", "list", "--trace-id", &trace[..8], "--json"],
        ),
        ("dlq show <event id>", vec!["dlq", "show", &event]),
        ("dlq stats --json", vec!["dlq", "stats", "--json"]),
        (
            "dlq list --fingerprint F --limit 20",
            vec!["dlq", "list", "--fingerprint", group, "--limit", "20"],
        ),
        ("(process start: --help)", vec!["--help"]),
    ] {
        let mut times = Vec::new();
        for _ in 0..args.runs {
            let started = Instant::now();
            let output = Command::new(bin).args(&cli).envs(env.clone()).output()?;
            times.push(started.elapsed());
            if !output.status.success() {
                return Err(format!(
                    "{label} failed: {}",
                    String::from_utf8_lossy(&output.stderr)
                )
                .into());
            }
        }
        times.sort();
        println!(
            "{label:<52} {:>6.1} ms  {}",
            ms(times[times.len() / 2]),
            times
                .iter()
                .map(|t| format!("{:.0}", ms(*t)))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }

    // Ingest: records published into the handler's dead-letter queue, moved by `dlq ingest`.
    let connection = Connection::connect(&args.amqp_url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let queue = format!("{id}.{HANDLER}.dlq");
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let mut confirms = Vec::new();
    for i in 0..args.ingest {
        let mut record = template.clone();
        record["originalMessage"]["id"] = format!("evt_ingest_{i}").into();
        record["failureMetadata"]["traceId"] = format!("{i:032x}").into();
        let body = serde_json::to_vec(&record)?;
        confirms.push(
            channel
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await?,
        );
    }
    for confirm in confirms {
        confirm.await?;
    }
    let started = Instant::now();
    let output = Command::new(bin)
        .args(["dlq", "ingest", "--until-empty"])
        .envs(env)
        .output()?;
    let took = started.elapsed();
    if !output.status.success() {
        return Err(format!(
            "dlq ingest failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    let stored: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {}.dead_letters WHERE event_id LIKE 'evt_ingest_%'",
        schema.quoted()
    ))
    .fetch_one(&pool)
    .await?;
    // `--until-empty` waits one idle second before it stops: not ingest time.
    let busy = took.saturating_sub(Duration::from_secs(1));
    println!(
        "\ningest: {stored} of {} records stored in {:.2} s (+1 s idle wait): {:.0} records/s",
        args.ingest,
        busy.as_secs_f64(),
        stored as f64 / busy.as_secs_f64()
    );
    let _ = connection.close(200, "done".into()).await;
    if stored as u64 != args.ingest {
        return Err(format!("ingest stored {stored} of {}", args.ingest).into());
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// What the example worker's binary needs to use this run's schema and queues.
fn worker_env(args: &Args, id: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AMQP_URL", args.amqp_url.clone()),
        ("DATABASE_URL", args.database_url.clone()),
        ("WORKER_DB_SCHEMA", id.to_owned()),
        ("WORKER_QUEUE_PREFIX", format!("{id}.")),
        ("WORKER_EXCHANGE", format!("events.{id}")),
        ("WORKER_DLQ_STORE", "on".into()),
        ("NO_COLOR", "1".into()),
    ]
}

/// A §5 record of the example's handler.
fn template() -> serde_json::Value {
    let body = r#"{"orderId":"ord_1","amount":-5}"#;
    serde_json::json!({
        "originalMessage": {
            "id": "evt_template",
            "type": "OrderPlaced",
            "payload": {"orderId": "ord_1", "amount": -5},
            "routingKey": "OrderPlaced",
            "exchange": "events",
            "headers": {},
            "body": body,
            "bodyEncoding": "utf8",
            "properties": serde_json::to_value(
                worker_core::transport::message::Properties {
                    message_id: Some("evt_template".into()),
                    ..Default::default()
                }
            ).expect("properties serialize"),
        },
        "failureMetadata": {
            "attempts": 1,
            "firstFailedAt": "2026-12-01T03:00:00.000Z",
            "lastFailedAt": "2026-12-01T03:00:00.000Z",
            "lastError": "InvalidAmount: amount -5 must be positive",
            "errorKind": "poison",
            "consumer": "dlq-scale",
            "handler": HANDLER,
            "traceId": "00000000000000000000000000000001",
        },
    })
}

async fn cleanup(args: &Args, id: &str) {
    if let Ok(pool) = PgPoolOptions::new()
        .max_connections(1)
        .connect(&args.database_url)
        .await
    {
        let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{id}\" CASCADE"))
            .execute(&pool)
            .await;
    }
    if let Ok(connection) =
        Connection::connect(&args.amqp_url, ConnectionProperties::default()).await
    {
        if let Ok(channel) = connection.create_channel().await {
            let _ = channel
                .queue_delete(
                    format!("{id}.{HANDLER}.dlq").as_str().into(),
                    Default::default(),
                )
                .await;
        }
        let _ = connection.close(200, "done".into()).await;
    }
}
