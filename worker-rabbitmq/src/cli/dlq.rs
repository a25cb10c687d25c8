//! `dlq list | show | stats | replay | purge`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use lapin::Connection;
use serde_json::json;
use worker_core::transport::dead_letter::{format_time, DeadLetterStore, RowStatus, Selection};
use worker_core::{DeadLetterRecord, ErrorKind};

use super::args::{
    DlqCommand, FilterArgs, IngestArgs, ListArgs, PurgeArgs, ReplayArgs, ShowArgs, StatsArgs,
};
use super::format::{ago, Colour, Console};
use super::inspect::{declare, open};
use super::{CliError, Setup};
use crate::dlq::{fingerprint::mask, replay_message, DlqError, Entry, Filter, HeldQueue};
use crate::publisher::Publisher;
use crate::topology::QueueNames;

pub(super) async fn run(
    setup: &Setup,
    command: DlqCommand,
    console: &mut Console,
) -> Result<u8, CliError> {
    let broker = Broker {
        setup,
        connection: tokio::sync::OnceCell::new(),
    };
    let result = match command {
        DlqCommand::List(args) => list(setup, &broker, args, console).await,
        DlqCommand::Show(args) => show(setup, &broker, args, console).await,
        DlqCommand::Stats(args) => stats(setup, &broker, args, console).await,
        DlqCommand::Replay(args) => replay(setup, &broker, args, console).await,
        DlqCommand::Purge(args) => purge(setup, &broker, args, console).await,
        DlqCommand::Ingest(args) => ingest(setup, &broker, args, console).await,
    };
    // Closing the connection gives back anything still held, whatever happened above.
    broker.close().await;
    result
}

/// The broker connection, opened by the first step that needs it: with the dead-letter store,
/// `list`, `show`, `stats`, `purge` and a dry-run `replay` read and write only the database and
/// never connect (an answer in milliseconds, also while the broker is down).
struct Broker<'a> {
    setup: &'a Setup,
    connection: tokio::sync::OnceCell<Arc<Connection>>,
}

impl Broker<'_> {
    async fn get(&self) -> Result<&Arc<Connection>, CliError> {
        self.connection
            .get_or_try_init(|| async { Ok(Arc::new(open(self.setup).await?)) })
            .await
    }

    async fn close(self) {
        if let Some(connection) = self.connection.get() {
            let _ = connection.close(200, "dlq command done".into()).await;
        }
    }
}

/// One handler's dead-letter queue, held.
struct Held {
    handler: &'static str,
    names: QueueNames,
    queue: HeldQueue,
}

async fn hold(setup: &Setup, broker: &Broker<'_>, filter: &Filter) -> Result<Vec<Held>, CliError> {
    for wanted in &filter.handlers {
        if !setup.specs.iter().any(|s| s.name == wanted) {
            let known: Vec<_> = setup.specs.iter().map(|s| s.name).collect();
            return Err(CliError::Usage(format!(
                "unknown handler `{wanted}`; this worker has: {}",
                known.join(", ")
            )));
        }
    }
    if filter.status.is_some() && !setup.config.dlq_store {
        return Err(CliError::Usage(
            "--status needs the dead-letter store (this worker runs WORKER_DLQ_STORE=off): a \
             dead-letter queue holds only pending dead letters"
                .into(),
        ));
    }
    let store = match setup.config.dlq_store {
        true => Some(open_store(setup).await?),
        false => None,
    };
    let mut held = Vec::new();
    for spec in &setup.specs {
        if !filter.handlers.is_empty() && !filter.handlers.iter().any(|h| h == spec.name) {
            continue;
        }
        let names = QueueNames::new(&setup.broker, spec.name);
        let queue = match &store {
            Some((pool, store)) => {
                let selection = store_selection(filter, spec.name);
                HeldQueue::from_store(pool, store, &names.dlq, &selection).await?
            }
            None => HeldQueue::hold(broker.get().await?, &names.dlq).await?,
        };
        held.push(Held {
            handler: spec.name,
            names,
            queue,
        });
    }
    Ok(held)
}

/// The dead-letter store of the worker's schema, created or upgraded if needed.
async fn open_store(setup: &Setup) -> Result<(sqlx::PgPool, DeadLetterStore), CliError> {
    let pool = crate::database::connect(&setup.config, 2).await?;
    let store = DeadLetterStore::new(setup.config.db_schema.clone());
    store
        .migrate(&pool)
        .await
        .map_err(|e| crate::error::WorkerError::Migration(e.to_string()))?;
    Ok((pool, store))
}

/// What the store is asked for `handler`: the filter's criteria, pending rows unless a status
/// is asked for.
fn store_selection(filter: &Filter, handler: &str) -> Selection {
    Selection {
        handler: Some(handler.to_owned()),
        event_ids: filter.event_ids.clone(),
        trace_id_prefix: filter.trace_id.clone(),
        event_type: filter.event_type.clone(),
        error_kind: filter.error_kind.map(|k| k.as_str().to_owned()),
        fingerprint: filter.fingerprint.clone(),
        since: filter.since,
        until: filter.until,
        status: Some(filter.status.unwrap_or(RowStatus::Pending)),
        limit: filter.limit.and_then(|l| i64::try_from(l).ok()),
    }
}

async fn release(held: Vec<Held>) {
    for h in held {
        h.queue.release().await;
    }
}

fn selected<'a>(held: &'a [Held], filter: &Filter) -> Vec<(&'a Held, &'a Entry)> {
    held.iter()
        .flat_map(|h| h.queue.entries.iter().map(move |e| (h, e)))
        .filter(|(h, e)| filter.matches(h.handler, e))
        .collect()
}

fn record_json(entry: &Entry) -> Option<String> {
    entry
        .record
        .as_ref()
        .ok()
        .and_then(|r| serde_json::to_string(r).ok())
}

fn unreadable(console: &mut Console, entry: &Entry) {
    if let Err(reason) = &entry.record {
        console.warn(format!(
            "warning: entry {} of `{}` (event id {:?}) is not a dead-letter record: {reason}",
            entry.position,
            entry.queue,
            entry.event_id()
        ));
    }
}

fn kind_cell(kind: ErrorKind) -> (String, Colour) {
    let colour = match kind {
        ErrorKind::Poison => Colour::Red,
        ErrorKind::Retryable => Colour::Yellow,
    };
    (kind.to_string(), colour)
}

/// How many dead letters `dlq list` shows from the store without `--limit`.
const STORE_LIST_LIMIT: usize = 1000;

async fn list(
    setup: &Setup,
    broker: &Broker<'_>,
    args: ListArgs,
    console: &mut Console,
) -> Result<u8, CliError> {
    let mut filter = args.filters.filter(&[]);
    if setup.config.dlq_store {
        // The store may hold millions: read only what is shown.
        filter.limit = Some(args.limit.unwrap_or(STORE_LIST_LIMIT));
    }
    let held = hold(setup, broker, &filter).await?;
    let total: usize = held.iter().map(|h| h.queue.entries.len()).sum();
    let mut chosen = selected(&held, &filter);
    let matched = chosen.len();
    chosen.truncate(filter.limit.or(args.limit).unwrap_or(usize::MAX));
    let now = Utc::now();
    if args.json {
        for (_, entry) in &chosen {
            match record_json(entry) {
                Some(line) => console.line(line),
                None => unreadable(console, entry),
            }
        }
    } else if chosen.is_empty() {
        console.line(format!(
            "no dead letters match ({total} in {} queue(s))",
            held.len()
        ));
    } else {
        let mut rows = Vec::new();
        for (held, entry) in &chosen {
            match &entry.record {
                Ok(record) => {
                    let meta = &record.failure_metadata;
                    rows.push(vec![
                        (held.handler.to_string(), Colour::Plain),
                        (entry.event_id().unwrap_or_else(|| "-".into()), Colour::Bold),
                        (record.original_message.kind.clone(), Colour::Plain),
                        kind_cell(meta.error_kind),
                        (meta.attempts.to_string(), Colour::Plain),
                        (ago(meta.first_failed_at, now), Colour::Plain),
                        (ago(meta.last_failed_at, now), Colour::Plain),
                        (meta.trace_id.clone(), Colour::Dim),
                        (meta.last_error.clone(), Colour::Plain),
                    ]);
                }
                Err(reason) => rows.push(vec![
                    (held.handler.to_string(), Colour::Plain),
                    (entry.event_id().unwrap_or_else(|| "-".into()), Colour::Bold),
                    ("?".into(), Colour::Plain),
                    ("unreadable".into(), Colour::Red),
                    ("-".into(), Colour::Plain),
                    ("-".into(), Colour::Plain),
                    ("-".into(), Colour::Plain),
                    ("-".into(), Colour::Plain),
                    (format!("not a dead-letter record: {reason}"), Colour::Plain),
                ]),
            }
        }
        console.table(
            &[
                "HANDLER",
                "EVENT ID",
                "TYPE",
                "KIND",
                "ATTEMPTS",
                "FIRST FAILED",
                "LAST FAILED",
                "TRACE ID",
                "LAST ERROR",
            ],
            &rows,
        );
        match filter.limit {
            Some(limit) => console.line(format!(
                "{} shown from the dead-letter store (oldest first, at most {limit} per handler; \
                 --limit for more); `dlq show <event id>` for details",
                chosen.len()
            )),
            None => console.line(format!(
                "{} shown, {matched} matching, {total} in {} dead-letter queue(s); `dlq show <event id>` for details",
                chosen.len(),
                held.len()
            )),
        }
    }
    let nothing = chosen.is_empty();
    drop(chosen);
    release(held).await;
    // As `show`, `replay` and `purge`: a listing that matched nothing says so in its exit code,
    // so a script can tell "no such dead letter" from "here they are".
    Ok(if nothing {
        super::exit::NOTHING_MATCHED
    } else {
        0
    })
}

async fn show(
    setup: &Setup,
    broker: &Broker<'_>,
    args: ShowArgs,
    console: &mut Console,
) -> Result<u8, CliError> {
    let filter = Filter {
        handlers: args.handlers.clone(),
        event_ids: vec![args.event_id.clone()],
        ..Default::default()
    };
    let held = hold(setup, broker, &filter).await?;
    let chosen = selected(&held, &filter);
    let now = Utc::now();
    let mut first = true;
    for (held, entry) in &chosen {
        if args.json {
            match record_json(entry) {
                Some(line) => console.line(line),
                None => unreadable(console, entry),
            }
            continue;
        }
        if !first {
            console.line("");
        }
        first = false;
        let title = format!(
            "{} — entry {} of {} in {}",
            args.event_id,
            entry.position + 1,
            held.queue.entries.len(),
            held.names.dlq
        );
        console.styled(&[(&title, Colour::Bold)]);
        match &entry.record {
            Ok(record) => show_record(console, record, now),
            Err(reason) => {
                console.line(format!("  not a dead-letter record: {reason}"));
                console.line(format!("  body: {}", String::from_utf8_lossy(&entry.body)));
            }
        }
    }
    let found = !chosen.is_empty();
    drop(chosen);
    release(held).await;
    if !found {
        return Err(CliError::NothingMatched(format!(
            "event id `{}` (try `dlq list` to see what is there)",
            args.event_id
        )));
    }
    Ok(0)
}

fn time(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    format!("{} ({})", format_time(t), ago(t, now))
}

fn pretty(value: &serde_json::Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

fn show_record(console: &mut Console, record: &DeadLetterRecord, now: DateTime<Utc>) {
    let meta = &record.failure_metadata;
    let original = &record.original_message;
    let plain = |text: String| (text, Colour::Plain);
    let fields = [
        ("handler", plain(meta.handler.clone())),
        ("event type", plain(original.kind.clone())),
        ("error kind", kind_cell(meta.error_kind)),
        ("attempts", plain(meta.attempts.to_string())),
        ("first failed", plain(time(meta.first_failed_at, now))),
        ("last failed", plain(time(meta.last_failed_at, now))),
        ("trace id", plain(meta.trace_id.clone())),
        ("consumer", plain(meta.consumer.clone())),
        (
            "published to",
            plain(format!(
                "exchange `{}`, routing key `{}`",
                original.exchange, original.routing_key
            )),
        ),
        ("fingerprint", plain(crate::dlq::fingerprint(record))),
    ];
    for (name, (value, colour)) in fields {
        console.styled(&[(&format!("  {name:<13}"), Colour::Plain), (&value, colour)]);
    }
    console.line("  last error:");
    for line in meta.last_error.lines() {
        console.line(format!("    {line}"));
    }
    let sections = [
        ("payload", original.payload.clone()),
        ("headers", original.headers.clone()),
        (
            "properties",
            serde_json::to_value(&original.properties).unwrap_or_default(),
        ),
    ];
    for (name, value) in sections {
        console.line(format!("  {name}:"));
        for line in pretty(&value).lines() {
            console.line(format!("    {line}"));
        }
    }
    if original.body_encoding == worker_core::transport::dead_letter::BodyEncoding::Base64 {
        console.line(format!("  body (base64, not UTF-8): {}", original.body));
    }
}

#[derive(Default)]
struct Group {
    count: usize,
    kind: Option<ErrorKind>,
    message: String,
    oldest: Option<DateTime<Utc>>,
    newest: Option<DateTime<Utc>>,
    example: Option<String>,
}

impl Group {
    fn add(&mut self, record: &DeadLetterRecord) {
        let meta = &record.failure_metadata;
        self.count += 1;
        self.kind = Some(meta.error_kind);
        self.oldest = Some(
            self.oldest
                .map_or(meta.first_failed_at, |t| t.min(meta.first_failed_at)),
        );
        self.newest = Some(
            self.newest
                .map_or(meta.last_failed_at, |t| t.max(meta.last_failed_at)),
        );
        if self.example.is_none() {
            self.example = record.original_message.id.clone();
        }
    }
}

/// Dead letters counted by handler (all, poison, retryable) and by `(handler, fingerprint)`.
type Counted = (
    BTreeMap<&'static str, (usize, usize, usize)>,
    BTreeMap<(&'static str, String), Group>,
);

/// [`Counted`] from the queues: every entry read and grouped here.
async fn queue_groups(
    setup: &Setup,
    broker: &Broker<'_>,
    filter: &Filter,
) -> Result<Counted, CliError> {
    let held = hold(setup, broker, filter).await?;
    let chosen = selected(&held, filter);
    let mut handlers: BTreeMap<&'static str, (usize, usize, usize)> =
        held.iter().map(|h| (h.handler, (0, 0, 0))).collect();
    let mut groups: BTreeMap<(&'static str, String), Group> = BTreeMap::new();
    for (held, entry) in &chosen {
        let counts = handlers.entry(held.handler).or_default();
        counts.0 += 1;
        match &entry.record {
            Ok(record) => {
                match record.failure_metadata.error_kind {
                    ErrorKind::Poison => counts.1 += 1,
                    ErrorKind::Retryable => counts.2 += 1,
                }
                let fingerprint = crate::dlq::fingerprint(record);
                let group = groups
                    .entry((held.handler, fingerprint))
                    .or_insert_with(|| Group {
                        message: mask(&record.failure_metadata.last_error),
                        ..Default::default()
                    });
                group.add(record);
            }
            Err(_) => {
                let group = groups
                    .entry((held.handler, "unreadable".into()))
                    .or_insert_with(|| Group {
                        message: "not a dead-letter record".into(),
                        ..Default::default()
                    });
                group.count += 1;
            }
        }
    }
    drop(chosen);
    release(held).await;
    Ok((handlers, groups))
}

/// [`Counted`] from the store: counted by the database, one query per handler.
async fn store_groups(setup: &Setup, filter: &Filter) -> Result<Counted, CliError> {
    let (pool, store) = open_store(setup).await?;
    let mut handlers = BTreeMap::new();
    let mut groups = BTreeMap::new();
    for spec in &setup.specs {
        if !filter.handlers.is_empty() && !filter.handlers.iter().any(|h| h == spec.name) {
            continue;
        }
        let counts: &mut (usize, usize, usize) = handlers.entry(spec.name).or_default();
        let rows = store
            .groups(&pool, &store_selection(filter, spec.name))
            .await
            .map_err(|source| DlqError::Store {
                action: format!("count the dead letters of `{}`", spec.name),
                source,
            })?;
        for row in rows {
            let count = usize::try_from(row.count).unwrap_or(usize::MAX);
            counts.0 += count;
            let kind = match row.error_kind.as_deref() {
                Some("poison") => Some(ErrorKind::Poison),
                Some("retryable") => Some(ErrorKind::Retryable),
                _ => None,
            };
            match kind {
                Some(ErrorKind::Poison) => counts.1 += count,
                Some(ErrorKind::Retryable) => counts.2 += count,
                None => {}
            }
            let (fingerprint, message) = match row.fingerprint {
                Some(fingerprint) => {
                    let message = fingerprint
                        .split_once(' ')
                        .map_or(fingerprint.as_str(), |(_, m)| m)
                        .to_owned();
                    (fingerprint, message)
                }
                None => ("unreadable".into(), "not a dead-letter record".into()),
            };
            groups.insert(
                (spec.name, fingerprint),
                Group {
                    count,
                    kind,
                    message,
                    oldest: row.oldest,
                    newest: row.newest,
                    example: row.example,
                },
            );
        }
    }
    pool.close().await;
    Ok((handlers, groups))
}

async fn stats(
    setup: &Setup,
    broker: &Broker<'_>,
    args: StatsArgs,
    console: &mut Console,
) -> Result<u8, CliError> {
    let filter = args.filters.filter(&[]);
    let (handlers, groups) = match setup.config.dlq_store {
        true => store_groups(setup, &filter).await?,
        false => queue_groups(setup, broker, &filter).await?,
    };
    let mut groups: Vec<_> = groups.into_iter().collect();
    groups.sort_by(|a, b| b.1.count.cmp(&a.1.count).then_with(|| a.0.cmp(&b.0)));
    let when = |t: Option<DateTime<Utc>>| t.map(format_time);
    if args.json {
        let handlers: Vec<_> = handlers
            .iter()
            .map(|(h, c)| json!({"handler": h, "count": c.0, "poison": c.1, "retryable": c.2}))
            .collect();
        let groups: Vec<_> = groups
            .iter()
            .map(|((handler, fingerprint), g)| {
                json!({"handler": handler, "fingerprint": fingerprint,
                       "errorKind": g.kind.map(|k| k.as_str()), "count": g.count,
                       "oldest": when(g.oldest), "newest": when(g.newest), "exampleEventId": g.example})
            })
            .collect();
        console.line(json!({"handlers": handlers, "groups": groups}).to_string());
        return Ok(0);
    }
    let now = Utc::now();
    let rows: Vec<_> = handlers
        .iter()
        .map(|(h, c)| {
            vec![
                (h.to_string(), Colour::Plain),
                (c.0.to_string(), Colour::Bold),
                (c.1.to_string(), Colour::Red),
                (c.2.to_string(), Colour::Yellow),
            ]
        })
        .collect();
    console.table(&["HANDLER", "DEAD LETTERS", "POISON", "RETRYABLE"], &rows);
    if groups.is_empty() {
        return Ok(0);
    }
    console.line("");
    let rel = |t: Option<DateTime<Utc>>| t.map_or("-".into(), |t| ago(t, now));
    let rows: Vec<_> = groups
        .iter()
        .map(|((handler, _), g)| {
            vec![
                (g.count.to_string(), Colour::Bold),
                (handler.to_string(), Colour::Plain),
                g.kind.map(kind_cell).unwrap_or(("?".into(), Colour::Plain)),
                (rel(g.oldest), Colour::Plain),
                (rel(g.newest), Colour::Plain),
                (g.example.clone().unwrap_or_else(|| "-".into()), Colour::Dim),
                (g.message.clone(), Colour::Plain),
            ]
        })
        .collect();
    console.table(
        &[
            "COUNT",
            "HANDLER",
            "KIND",
            "OLDEST",
            "NEWEST",
            "E.G. EVENT",
            "FINGERPRINT (numbers → N, ids → <id>)",
        ],
        &rows,
    );
    Ok(0)
}

fn selection(
    ids: &[String],
    all: bool,
    filters: &FilterArgs,
    verb: &str,
) -> Result<Filter, CliError> {
    let filter = filters.filter(ids);
    if !all && filter.is_empty() {
        return Err(CliError::Usage(format!(
            "say which dead letters to {verb}: event ids, --all, or filters such as --trace-id or --handler (see `dlq {verb} --help`)"
        )));
    }
    Ok(filter)
}

fn describe(filter: &Filter) -> String {
    let mut parts = Vec::new();
    if !filter.event_ids.is_empty() {
        parts.push(format!("event id {}", filter.event_ids.join(", ")));
    }
    if !filter.handlers.is_empty() {
        parts.push(format!("handler {}", filter.handlers.join(", ")));
    }
    if let Some(t) = &filter.trace_id {
        parts.push(format!("trace id {t}…"));
    }
    if let Some(t) = &filter.event_type {
        parts.push(format!("event type {t}"));
    }
    if let Some(k) = filter.error_kind {
        parts.push(format!("error kind {k}"));
    }
    if let Some(s) = filter.since {
        parts.push(format!("failed since {}", format_time(s)));
    }
    if let Some(u) = filter.until {
        parts.push(format!("failed before {}", format_time(u)));
    }
    if let Some(f) = &filter.fingerprint {
        parts.push(format!("failure group \"{f}\""));
    }
    if let Some(s) = filter.status {
        parts.push(format!("status {}", s.as_str()));
    }
    if parts.is_empty() {
        "(the dead-letter queues are empty)".into()
    } else {
        parts.join(", ")
    }
}

fn action_line(
    console: &mut Console,
    json: bool,
    action: &str,
    held: &Held,
    entry: &Entry,
    to: Option<&str>,
) {
    let trace = entry
        .record
        .as_ref()
        .map(|r| r.failure_metadata.trace_id.clone())
        .unwrap_or_default();
    let id = entry.event_id().unwrap_or_else(|| "-".into());
    if json {
        console.line(
            json!({"action": action, "eventId": entry.event_id(), "handler": held.handler,
                   "from": held.names.dlq, "to": to, "traceId": trace})
            .to_string(),
        );
    } else {
        let target = to.map(|t| format!(" → {t}")).unwrap_or_default();
        console.line(format!(
            "{action:<14}{id}  {}{target}  trace {trace}",
            held.names.dlq
        ));
    }
}

async fn replay(
    setup: &Setup,
    broker: &Broker<'_>,
    args: ReplayArgs,
    console: &mut Console,
) -> Result<u8, CliError> {
    let filter = selection(&args.ids, args.all, &args.filters, "replay")?;
    let correction = match &args.payload {
        Some(path) => Some(corrected_payload(setup, path)?),
        None => None,
    };
    if !args.dry_run {
        // The work queues must exist, or the mandatory publish would come back unroutable.
        declare(broker.get().await?, setup).await?;
    }
    let held = hold(setup, broker, &filter).await?;
    let chosen = selected(&held, &filter);
    if chosen.is_empty() {
        release(held).await;
        return Err(CliError::NothingMatched(describe(&filter)));
    }
    if correction.is_some() && chosen.len() != 1 {
        let matched = chosen.len();
        drop(chosen);
        release(held).await;
        return Err(CliError::Usage(format!(
            "--payload replays one dead letter with a corrected body, but {matched} match \
             {}: name one by its event id (and --handler if two handlers hold it)",
            describe(&filter)
        )));
    }
    // A dead letter older than the dedup retention may have lost its dedup row (if the event
    // was in fact processed, by another copy), so replaying it could run the handler twice.
    let retention = setup.config.dedup_retention;
    let horizon =
        Utc::now() - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
    let stale = chosen
        .iter()
        .filter(|(_, e)| {
            e.record
                .as_ref()
                .is_ok_and(|r| r.failure_metadata.first_failed_at < horizon)
        })
        .count();
    if stale > 0 {
        let warning = format!(
            "{stale} of {} matching dead letter(s) first failed more than {} ago \
             (WORKER_DEDUP_RETENTION): their dedup rows may have been pruned, so an event that \
             was in fact processed would run again",
            chosen.len(),
            worker_core::transport::config::format_duration(retention)
        );
        if !args.force && !args.dry_run {
            drop(chosen);
            release(held).await;
            return Err(CliError::Usage(format!(
                "{warning}. Add --force to replay them anyway, or narrow the selection \
                 (e.g. --since {})",
                worker_core::transport::config::format_duration(retention)
            )));
        }
        console.warn(format!("warning: {warning}"));
    }
    // A dry run publishes nothing, so it needs no broker with the store.
    let publisher = match args.dry_run {
        true => None,
        false => Some(Publisher::new(Arc::clone(broker.get().await?))),
    };
    let pause = args.rate.map(|r| Duration::from_secs_f64(1.0 / r));
    let (mut replayed, mut skipped) = (0usize, 0usize);
    let mut failure = None;
    for (i, (held, entry)) in chosen.iter().enumerate() {
        let record = match &entry.record {
            Ok(record) => record,
            Err(_) => {
                unreadable(console, entry);
                skipped += 1;
                continue;
            }
        };
        if args.dry_run {
            action_line(
                console,
                args.json,
                "would replay",
                held,
                entry,
                Some(&held.names.work),
            );
            continue;
        }
        if let (Some(pause), true) = (pause, i > 0) {
            tokio::time::sleep(pause).await;
        }
        let mut message = match replay_message(record) {
            Ok(mut message) => {
                if let Some(payload) = &correction {
                    message.body = serde_json::to_vec(payload).expect("a JSON value serializes");
                }
                message
            }
            Err(source) => {
                console.warn(format!(
                    "error: {}",
                    DlqError::CorruptBody {
                        queue: held.names.dlq.clone(),
                        event_id: entry.event_id(),
                        source
                    }
                ));
                skipped += 1;
                continue;
            }
        };
        // Confirmed first, removed second: a crash in between leaves the entry in the DLQ
        // as well (replaying it again is harmless: dedup).
        // A producer span for the replay; the replayed attempt continues the event's trace under it.
        let span = tracing::info_span!(
            "publish",
            "otel.name" = %format_args!("publish {} (replay)", held.names.work),
            "otel.kind" = "producer",
            "messaging.system" = "rabbitmq",
            "messaging.operation.name" = "publish",
            "messaging.operation.type" = "send",
            "messaging.destination.name" = "",
            "messaging.rabbitmq.destination.routing_key" = %held.names.work,
            "messaging.message.id" = entry.event_id().as_deref().unwrap_or(""),
            "worker.replay" = true,
        );
        let traceparent = worker_core::transport::telemetry::traceparent(
            &span,
            &record.failure_metadata.trace_id,
        );
        message.properties.headers.insert(
            worker_core::transport::retry::WORKER_TRACEPARENT_HEADER.into(),
            worker_core::transport::message::HeaderValue::string(traceparent),
        );
        if let Err(source) = tracing::Instrument::instrument(
            publisher
                .as_ref()
                .expect("not a dry run: the publisher exists")
                .publish("", &held.names.work, &message),
            span,
        )
        .await
        {
            failure = Some(DlqError::Publish {
                queue: held.names.work.clone(),
                event_id: entry.event_id(),
                source,
            });
            break;
        }
        let removed = match &correction {
            Some(payload) => {
                let changes = payload_changes(&record.original_message.payload, payload);
                console.line(format!("corrected     {}", changes));
                held.queue.remove_corrected(entry, payload, &changes).await
            }
            None => held.queue.remove(entry, RowStatus::Replayed).await,
        };
        if let Err(error) = removed {
            failure = Some(error);
            break;
        }
        replayed += 1;
        action_line(
            console,
            args.json,
            "replayed",
            held,
            entry,
            Some(&held.names.work),
        );
    }
    let matched = chosen.len();
    drop(chosen);
    release(held).await;
    if !args.json {
        if args.dry_run {
            console.line(format!(
                "dry run: {} would be replayed; nothing changed",
                matched - skipped
            ));
        } else {
            console.line(format!(
                "replayed {replayed} of {} matching dead letter(s){}; each runs again from attempt 1 (dedup skips any that had in fact been processed)",
                matched,
                if skipped > 0 { format!(", skipped {skipped}") } else { String::new() }
            ));
        }
    }
    if let Some(error) = failure {
        return Err(error.into());
    }
    Ok(if skipped > 0 { super::exit::FAILED } else { 0 })
}

/// The corrected payload of `replay --payload FILE`: the file's JSON, with the store (which
/// keeps the original beside the correction) required.
fn corrected_payload(setup: &Setup, path: &std::path::Path) -> Result<serde_json::Value, CliError> {
    if !setup.config.dlq_store {
        return Err(CliError::Usage(
            "--payload needs the dead-letter store (this worker runs WORKER_DLQ_STORE=off): the \
             store keeps the original record beside the correction and what changed; a \
             dead-letter queue would lose the original"
                .into(),
        ));
    }
    let text = std::fs::read(path).map_err(|e| {
        CliError::Usage(format!(
            "cannot read the --payload file {}: {e}",
            path.display()
        ))
    })?;
    serde_json::from_slice(&text).map_err(|e| {
        CliError::Usage(format!(
            "the --payload file {} is not JSON ({e}); it holds the event's corrected payload, \
             e.g. {{\"orderId\": \"ord_1\", \"amount\": 5}}",
            path.display()
        ))
    })
}

/// What a corrected payload changes, as the store records it: one `{path, before, after}` per
/// differing value (JSON Pointer paths; objects compared key by key, anything else whole).
fn payload_changes(before: &serde_json::Value, after: &serde_json::Value) -> serde_json::Value {
    fn walk(
        path: &str,
        before: Option<&serde_json::Value>,
        after: Option<&serde_json::Value>,
        out: &mut Vec<serde_json::Value>,
    ) {
        match (before, after) {
            (Some(serde_json::Value::Object(b)), Some(serde_json::Value::Object(a))) => {
                let keys: std::collections::BTreeSet<&String> = b.keys().chain(a.keys()).collect();
                for key in keys {
                    let escaped = key.replace('~', "~0").replace('/', "~1");
                    walk(&format!("{path}/{escaped}"), b.get(key), a.get(key), out);
                }
            }
            (b, a) if b != a => {
                out.push(json!({"path": path, "before": b, "after": a}));
            }
            _ => {}
        }
    }
    let mut changes = Vec::new();
    walk("", Some(before), Some(after), &mut changes);
    serde_json::Value::Array(changes)
}

async fn purge(
    setup: &Setup,
    broker: &Broker<'_>,
    args: PurgeArgs,
    console: &mut Console,
) -> Result<u8, CliError> {
    let filter = selection(&args.ids, args.all, &args.filters, "purge")?;
    let held = hold(setup, broker, &filter).await?;
    let chosen = selected(&held, &filter);
    if chosen.is_empty() {
        release(held).await;
        return Err(CliError::NothingMatched(describe(&filter)));
    }
    let mut removed = 0usize;
    let mut failure = None;
    for (held, entry) in &chosen {
        if !args.yes {
            action_line(console, args.json, "would remove", held, entry, None);
            continue;
        }
        if let Err(error) = held.queue.remove(entry, RowStatus::Purged).await {
            failure = Some(error);
            break;
        }
        removed += 1;
        action_line(console, args.json, "removed", held, entry, None);
    }
    let matched = chosen.len();
    drop(chosen);
    release(held).await;
    if !args.json {
        if args.yes {
            console.line(format!("removed {removed} dead letter(s) for good"));
        } else {
            console.line(format!(
                "{matched} dead letter(s) would be removed; nothing changed. Add --yes to remove them."
            ));
        }
    }
    match failure {
        Some(error) => Err(error.into()),
        None => Ok(0),
    }
}

async fn ingest(
    setup: &Setup,
    broker: &Broker<'_>,
    args: IngestArgs,
    console: &mut Console,
) -> Result<u8, CliError> {
    let (pool, store) = open_store(setup).await?;
    let connection: &Connection = broker.get().await?;
    let expired = crate::dlq::ingest::prune(&pool, &store, setup.config.dlq_store_retention).await;
    if expired > 0 {
        console.line(format!(
            "deleted {expired} replayed or purged row(s) older than {}",
            worker_core::transport::config::format_duration(setup.config.dlq_store_retention)
        ));
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let idle = args.until_empty.then_some(Duration::from_secs(1));
    let queues: Vec<(&str, String)> = setup
        .specs
        .iter()
        .map(|spec| (spec.name, QueueNames::new(&setup.broker, spec.name).dlq))
        .collect();
    let work = futures::future::join_all(queues.iter().map(|(handler, queue)| {
        crate::dlq::ingest::ingest_queue(connection, &pool, &store, handler, queue, &stop, idle)
    }));
    tokio::pin!(work);
    let results = tokio::select! {
        results = &mut work => results,
        _ = worker_core::transport::shutdown::signal() => {
            stop.cancel();
            work.await
        }
    };
    let mut stored = 0;
    for result in results {
        stored += result?;
    }
    console.line(format!(
        "stored {stored} dead letter(s) in {}.dead_letters",
        setup.config.db_schema
    ));
    Ok(0)
}
