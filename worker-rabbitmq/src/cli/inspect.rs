//! `run`, `handlers`, `topology` and `demo`.

use std::sync::Arc;
use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::Connection;
use serde_json::json;
use worker_core::transport::partition::PARTITION_KEY_HEADER;

use super::args::TopologyArgs;
use super::format::{duration, Colour, Console};
use super::{CliError, Setup};
use crate::connection::connect;
use crate::demo::DemoPublisher;
use crate::error::WorkerError;
use crate::publisher::Publisher;
use crate::settings::QueueType;
use crate::topology::{self, QueueNames};
use crate::WorkerBuilder;

/// `run [--demo]`: serve; with `--demo`, publish the demo once every handler consumes.
pub(super) async fn run(
    builder: WorkerBuilder,
    setup: Setup,
    demo: bool,
    console: &mut Console,
) -> Result<u8, CliError> {
    if !demo {
        builder.serve().await?;
        return Ok(0);
    }
    if setup.demo.is_none() {
        return Err(no_demo());
    }
    let colour = console.colour;
    let demo_task = tokio::spawn(async move {
        let mut console = Console::terminal();
        console.colour = colour;
        let result = async {
            let mut connection = Arc::new(open(&setup).await?);
            // Declared first (idempotent), so waiting never asks about a missing queue. A failure
            // (e.g. a missing plugin, which also closes the connection) is left to the worker,
            // which declares the same topology and fails start-up with the reason: reported once.
            if declare(&connection, &setup).await.is_err() {
                connection = Arc::new(open(&setup).await?);
            }
            wait_until_consuming(&connection, &setup).await;
            let result = publish_demo(&setup, &connection, false, &mut console).await;
            let _ = connection.close(200, "demo published".into()).await;
            result
        }
        .await;
        if let Err(error) = result {
            console.warn(format!("error: {error}"));
        }
    });
    let result = builder.serve().await;
    demo_task.abort();
    result?;
    Ok(0)
}

async fn wait_until_consuming(connection: &Connection, setup: &Setup) {
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    loop {
        let mut ready = true;
        for spec in &setup.specs {
            let names = QueueNames::new(&setup.broker, spec.name);
            // A partitioned handler consumes its partition queues too (a passive declare counts
            // the active consumer of a single-active-consumer queue).
            let partitions = spec.partition.map_or(0, |p| p.partitions);
            let queues = std::iter::once(names.work.clone())
                .chain((0..partitions).map(|k| names.partition(k)));
            for queue in queues {
                let consumers = match connection.create_channel().await {
                    Ok(channel) => {
                        let count = channel
                            .queue_declare(queue.as_str().into(), passive, FieldTable::default())
                            .await
                            .map(|q| q.consumer_count())
                            .unwrap_or(0);
                        let _ = channel.close(200, "".into()).await;
                        count
                    }
                    Err(_) => 0,
                };
                ready &= consumers > 0;
            }
        }
        if ready {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub(super) async fn open(setup: &Setup) -> Result<Connection, WorkerError> {
    connect(&setup.broker, &format!("{}-cli", setup.config.consumer)).await
}

fn no_demo() -> CliError {
    CliError::Usage(
        "this worker registers no demo (the application adds one with `WorkerBuilder::demo`)"
            .into(),
    )
}

/// How `handlers` describes a handler's ordering: `by <field> into <n>` or `-`.
fn partitioned(spec: &worker_core::HandlerSpec) -> String {
    spec.partition.map_or_else(
        || "-".to_owned(),
        |p| format!("by {} into {}", p.key, p.partitions),
    )
}

/// The circuit breaker settings in a word or two: `10 events`, `off`.
fn breaker(spec: &worker_core::HandlerSpec) -> String {
    if spec.breaker.enabled() {
        format!("{} events", spec.breaker.failures)
    } else {
        "off".to_owned()
    }
}

/// Each handler's breaker state as a running worker reports it on its `/metrics`
/// (`WORKER_METRICS_ADDR`, an unspecified address read on loopback), or `None` when no worker
/// answers there within half a second.
async fn breaker_states(
    config: &worker_core::WorkerConfig,
) -> Option<std::collections::HashMap<String, &'static str>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut addr = config.metrics_addr?;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await
            .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        Some(response)
    };
    let response = tokio::time::timeout(std::time::Duration::from_millis(500), fetch)
        .await
        .ok()??;
    let states = response
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("worker_breaker_state{handler=\"")?;
            let (handler, value) = rest.split_once("\"} ")?;
            let state = match value.trim() {
                "0" => "closed",
                "1" => "open",
                "2" => "half-open",
                _ => return None,
            };
            Some((handler.to_owned(), state))
        })
        .collect();
    Some(states)
}

/// `handlers`.
pub(super) async fn handlers(
    setup: &Setup,
    json: bool,
    console: &mut Console,
) -> Result<u8, CliError> {
    let states = breaker_states(&setup.config).await;
    let state_of = |name: &str| states.as_ref().and_then(|s| s.get(name).copied());
    if json {
        let list: Vec<_> = setup
            .specs
            .iter()
            .map(|s| {
                let names = QueueNames::new(&setup.broker, s.name);
                json!({
                    "name": s.name,
                    "eventType": s.event_type,
                    "queue": names.work,
                    "deadLetterQueue": names.dlq,
                    "dedup": s.dedup,
                    "retry": {
                        "attempts": s.retry.max_attempts,
                        "baseMs": s.retry.base.as_millis() as u64,
                        "capMs": s.retry.cap.as_millis() as u64,
                        "jitterMs": s.retry.jitter.as_millis() as u64,
                        "inPlace": s.partition.is_some(),
                    },
                    "concurrency": s.concurrency,
                    "breaker": {
                        "failures": s.breaker.failures,
                        "probeMs": s.breaker.probe.as_millis() as u64,
                        "maxProbeMs": s.breaker.max_probe.as_millis() as u64,
                        "state": state_of(s.name),
                    },
                    "partition": s.partition.map(|p| json!({
                        "key": p.key,
                        "header": PARTITION_KEY_HEADER,
                        "partitions": p.partitions,
                        "exchange": names.partition_exchange(),
                        "queues": (0..p.partitions).map(|k| names.partition(k)).collect::<Vec<_>>(),
                    })),
                })
            })
            .collect();
        console.line(serde_json::Value::Array(list).to_string());
        return Ok(0);
    }
    let rows: Vec<_> = setup
        .specs
        .iter()
        .map(|s| {
            let names = QueueNames::new(&setup.broker, s.name);
            let queue = match s.partition {
                Some(p) => format!("{}…p{}", names.partition(0), p.partitions.saturating_sub(1)),
                None => names.work,
            };
            vec![
                (s.name.to_string(), Colour::Plain),
                (s.event_type.to_string(), Colour::Plain),
                (queue, Colour::Plain),
                ((if s.dedup { "yes" } else { "no" }).into(), Colour::Plain),
                (s.retry.max_attempts.to_string(), Colour::Plain),
                (duration(s.retry.base), Colour::Plain),
                (duration(s.retry.cap), Colour::Plain),
                (duration(s.retry.jitter), Colour::Plain),
                (s.concurrency.to_string(), Colour::Plain),
                (partitioned(s), Colour::Plain),
                (breaker(s), Colour::Plain),
                match state_of(s.name) {
                    Some("closed") => ("closed".to_owned(), Colour::Plain),
                    Some(state) => (state.to_owned(), Colour::Red),
                    None => ("-".to_owned(), Colour::Plain),
                },
            ]
        })
        .collect();
    console.table(
        &[
            "HANDLER",
            "EVENT",
            "QUEUE",
            "DEDUP",
            "ATTEMPTS",
            "BASE",
            "CAP",
            "JITTER",
            "CONCURRENCY",
            "PARTITIONED",
            "BREAKER",
            "STATE",
        ],
        &rows,
    );
    Ok(0)
}

/// `topology [--declare]`: what [`topology::declare_handler`] declares, with the bindings.
pub(super) async fn topology(
    setup: &Setup,
    args: TopologyArgs,
    console: &mut Console,
) -> Result<u8, CliError> {
    let config = &setup.broker;
    let work_type = match config.queue_type {
        QueueType::Quorum => "quorum",
        QueueType::Classic => "classic",
    };
    let delivery_limit = match (config.queue_type, config.delivery_limit) {
        (QueueType::Quorum, Some(limit)) => Some(limit),
        _ => None,
    };
    let mut rows = Vec::new();
    let mut exchange_lines = vec![format!("exchange {} (topic, durable)", config.exchange)];
    let mut json_exchanges =
        vec![json!({"name": config.exchange, "type": "topic", "durable": true})];
    let mut json_queues = Vec::new();
    for spec in &setup.specs {
        let names = QueueNames::new(config, spec.name);
        if let Some(partitioning) = spec.partition {
            let exchange = names.partition_exchange();
            exchange_lines.push(format!(
                "exchange {exchange} (x-consistent-hash on header {PARTITION_KEY_HEADER}, durable) \
                 ← {} ({})",
                config.exchange, spec.event_type
            ));
            json_exchanges.push(json!({"name": exchange, "type": "x-consistent-hash",
                "durable": true, "handler": spec.name, "hashHeader": PARTITION_KEY_HEADER,
                "boundTo": {"exchange": config.exchange, "routingKey": spec.event_type}}));
            // Events reach the partition queues; `h` is not bound and only takes replays.
            rows.push(vec![
                (names.work.clone(), Colour::Plain),
                (work_type.to_string(), Colour::Plain),
                (
                    format!(
                        "{}: replays only (not bound); forwarded to {exchange}",
                        spec.name
                    ),
                    Colour::Plain,
                ),
            ]);
            json_queues.push(
                json!({"name": names.work, "type": work_type, "handler": spec.name,
                "role": "work", "boundTo": null, "forwardsTo": exchange}),
            );
            for k in 0..partitioning.partitions {
                let queue = names.partition(k);
                rows.push(vec![
                    (queue.clone(), Colour::Plain),
                    (
                        format!("{work_type}, single active consumer"),
                        Colour::Plain,
                    ),
                    (
                        format!(
                            "{}: partition {k} of {} (by {}) ← {exchange} (weight 1)",
                            spec.name, partitioning.partitions, partitioning.key
                        ),
                        Colour::Plain,
                    ),
                ]);
                json_queues.push(
                    json!({"name": queue, "type": work_type, "handler": spec.name,
                    "role": "partition", "partition": k, "singleActiveConsumer": true,
                    "boundTo": {"exchange": exchange, "routingKey": "1"}}),
                );
            }
        } else {
            rows.push(vec![
                (names.work.clone(), Colour::Plain),
                (work_type.to_string(), Colour::Plain),
                (
                    format!("{} ← {} ({})", spec.name, config.exchange, spec.event_type),
                    Colour::Plain,
                ),
            ]);
            json_queues.push(json!({"name": names.work, "type": work_type, "handler": spec.name,
                "role": "work", "boundTo": {"exchange": config.exchange, "routingKey": spec.event_type}}));
        }
        for level in 1..=crate::topology::delay_levels(spec) {
            let delay = spec.retry.base_delay(level);
            rows.push(vec![
                (names.delay(level), Colour::Dim),
                (work_type.to_string(), Colour::Dim),
                (
                    format!(
                        "delay {} + jitter ≤ {}, then back to {}",
                        duration(delay),
                        duration(spec.retry.jitter),
                        names.work
                    ),
                    Colour::Dim,
                ),
            ]);
            json_queues.push(
                json!({"name": names.delay(level), "type": work_type, "handler": spec.name,
                "role": "delay", "level": level, "delayMs": delay.as_millis() as u64,
                "deadLettersTo": names.work}),
            );
        }
        if let Some(limit) = delivery_limit {
            rows.push(vec![
                (names.delivery_limit.clone(), Colour::Dim),
                ("quorum".into(), Colour::Dim),
                (
                    format!("delivered {limit} times unsettled (crash loop), recorded in the DLQ"),
                    Colour::Dim,
                ),
            ]);
            json_queues.push(json!({"name": names.delivery_limit, "type": "quorum",
                "handler": spec.name, "role": "delivery-limit", "deliveryLimit": limit}));
        }
        rows.push(vec![
            (names.dlq.clone(), Colour::Plain),
            ("classic".into(), Colour::Plain),
            ("dead letters".into(), Colour::Plain),
        ]);
        json_queues.push(
            json!({"name": names.dlq, "type": "classic", "handler": spec.name, "role": "dead-letter"}),
        );
    }
    if args.declare {
        let connection = open(setup).await?;
        let result = declare(&connection, setup).await;
        let _ = connection.close(200, "topology declared".into()).await;
        result?;
    }
    if args.json {
        console.line(
            json!({"exchange": {"name": config.exchange, "type": "topic", "durable": true},
                   "exchanges": json_exchanges, "queues": json_queues, "declared": args.declare})
            .to_string(),
        );
        return Ok(0);
    }
    for line in exchange_lines {
        console.line(line);
    }
    console.table(&["QUEUE", "TYPE", "WHAT"], &rows);
    if args.declare {
        console.styled(&[("declared (idempotent; nothing consumed)", Colour::Green)]);
    }
    Ok(0)
}

pub(super) async fn declare(connection: &Connection, setup: &Setup) -> Result<(), WorkerError> {
    let channel = connection
        .create_channel()
        .await
        .map_err(WorkerError::broker("open a channel"))?;
    topology::declare_exchange(&channel, &setup.broker).await?;
    for spec in &setup.specs {
        topology::declare_handler(&channel, &setup.broker, spec).await?;
    }
    let _ = channel.close(200, "declared".into()).await;
    Ok(())
}

/// `demo`.
pub(super) async fn demo(setup: &Setup, json: bool, console: &mut Console) -> Result<u8, CliError> {
    if setup.demo.is_none() {
        return Err(no_demo());
    }
    let connection = Arc::new(open(setup).await?);
    let result = publish_demo(setup, &connection, json, console).await;
    let _ = connection.close(200, "demo published".into()).await;
    result.map(|()| 0)
}

async fn publish_demo(
    setup: &Setup,
    connection: &Arc<Connection>,
    json: bool,
    console: &mut Console,
) -> Result<(), CliError> {
    let hook = setup.demo.clone().ok_or_else(no_demo)?;
    declare(connection, setup).await?;
    let publisher = Arc::new(Publisher::new(Arc::clone(connection)));
    let events = DemoPublisher::new(
        Arc::clone(&publisher),
        setup.broker.exchange.clone(),
        setup.config.db_schema.to_string(),
    );
    let advice = hook(events.clone()).await;
    publisher.close().await;
    let advice: String = advice.map_err(CliError::from)?;
    let published = events.published();
    if json {
        for p in &published {
            console.line(serde_json::to_string(p).unwrap_or_default());
        }
        return Ok(());
    }
    let title = format!(
        "demo: published {} events to `{}`",
        published.len(),
        setup.broker.exchange
    );
    console.styled(&[(&title, Colour::Bold)]);
    let rows: Vec<_> = published
        .iter()
        .map(|p| {
            vec![
                (p.event_id.clone(), Colour::Plain),
                (p.event_type.clone(), Colour::Plain),
                (p.trace_id.clone(), Colour::Dim),
                (p.expect.clone(), Colour::Plain),
            ]
        })
        .collect();
    console.table(&["EVENT ID", "TYPE", "TRACE ID", "EXPECT"], &rows);
    for line in advice.lines() {
        console.line(line);
    }
    Ok(())
}
