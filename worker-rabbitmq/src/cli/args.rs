//! The command line, as clap parses it. Every `--help` ends with examples, written with [`BIN`]
//! for the binary's name: [`command`] puts in the name the binary was started as, so a worker
//! called `billing-worker` shows `billing-worker dlq list`.

use std::ffi::{OsStr, OsString};
use std::path::Path;

use chrono::{DateTime, Utc};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use worker_core::transport::dead_letter::RowStatus;
use worker_core::ErrorKind;

use crate::dlq::Filter;

/// Stands for the binary's own name in the examples of the help texts.
const BIN: &str = "{bin}";

/// The name examples use when the command line has no program name at all.
const FALLBACK_BIN: &str = "worker";

/// Parses `args` (the first is the program name, as in `std::env::args_os`), with help texts
/// whose examples name the program as it was started.
pub(crate) fn parse<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let mut command = command(&bin_name(args.first().map(OsString::as_os_str)));
    let mut matches = command.try_get_matches_from_mut(args)?;
    Cli::from_arg_matches_mut(&mut matches).map_err(|error| error.format(&mut command))
}

/// The command line of the binary called `bin`: every example in every `--help` starts with it.
/// `--version` says which binary it is and the framework it was built with
/// (`billing-worker (worker-rabbitmq 0.1.0)`).
pub(crate) fn command(bin: &str) -> clap::Command {
    name_examples(Cli::command(), bin)
        .display_name(bin)
        .version(concat!("(worker-rabbitmq ", env!("CARGO_PKG_VERSION"), ")"))
}

/// Writes `bin` for [`BIN`] in the examples of `command` and of all its subcommands.
fn name_examples(command: clap::Command, bin: &str) -> clap::Command {
    let examples = command
        .get_after_help()
        .map(|help| help.to_string().replace(BIN, bin));
    let command = match examples {
        Some(examples) => command.after_help(examples),
        None => command,
    };
    command.mut_subcommands(|subcommand| name_examples(subcommand, bin))
}

/// The binary's name from the program name of its command line: the file name without directory
/// and extension (`./target/release/billing-worker` → `billing-worker`).
fn bin_name(program: Option<&OsStr>) -> String {
    program
        .and_then(|program| Path::new(program).file_stem())
        .map(|stem| stem.to_string_lossy().into_owned())
        .filter(|stem| !stem.is_empty())
        .unwrap_or_else(|| FALLBACK_BIN.to_owned())
}

const EXIT_CODES: &str = "Exit codes: 0 ok, 1 failed, 2 bad usage or configuration, \
3 nothing matched, 4 RabbitMQ or PostgreSQL unreachable.
Configuration comes from the environment (AMQP_URL, DATABASE_URL, WORKER_*), as for `run`.";

/// An event worker. Without a subcommand it runs (consumes until Ctrl-C).
#[derive(Debug, Parser)]
#[command(
    version,
    after_help = "Examples:\n  {bin}                      run the worker\n  {bin} run --demo           run it and publish a demo burst\n  {bin} dlq list --trace-id 4bf92f35\n  {bin} dlq stats\n\nExit codes: 0 ok, 1 failed, 2 bad usage or configuration, 3 nothing matched, 4 RabbitMQ or PostgreSQL unreachable."
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the worker: declare the topology and consume until SIGINT/SIGTERM (the default).
    #[command(
        after_help = "Examples:\n  {bin} run\n  {bin} run --demo     # also publish the demo burst once consuming"
    )]
    Run(RunArgs),
    /// List the registered handlers: event type, queue, dedup, retry policy, concurrency, circuit
    /// breaker (and its state, read from the worker's /metrics at WORKER_METRICS_ADDR when one runs).
    #[command(after_help = "Examples:\n  {bin} handlers\n  {bin} handlers --json | jq '.[].name'")]
    Handlers(JsonArgs),
    /// Show the exchange, queues and bindings the worker declares.
    #[command(
        after_help = "Examples:\n  {bin} topology\n  {bin} topology --declare    # create them now, without consuming"
    )]
    Topology(TopologyArgs),
    /// Inspect, replay and purge dead letters (`<handler>.dlq`). Reading never changes the queue.
    #[command(subcommand, after_help = EXIT_CODES)]
    Dlq(DlqCommand),
    /// Publish one test event to the exchange as a producer would: persistent JSON with
    /// `message_id` and a fresh `traceparent`, `mandatory`, confirmed by the broker.
    #[command(
        after_help = "Examples:\n  {bin} publish OrderPlaced '{\"orderId\": \"ord_1\", \"userId\": \"usr_1\", \"amount\": 4900}'\n  {bin} publish OrderPlaced --id evt_1 < order.json       # the body from stdin\n  {bin} publish OrderPlaced '{...}' --header tenant=acme\n  {bin} publish OrderPlaced 'not json' --raw              # bad input, to see its dead letter\n\nExit codes: 0 published, 2 bad usage (a body that is not JSON without --raw), 3 no queue is bound for the event type (start the worker, or `{bin} topology --declare`), 4 RabbitMQ unreachable."
    )]
    Publish(PublishArgs),
    /// Publish the application's demo burst to the exchange and say what to look at.
    #[command(
        after_help = "Examples:\n  {bin} demo          # with the worker running in another terminal\n  {bin} run --demo    # both in one command"
    )]
    Demo(JsonArgs),
    /// The transactional outbox: run a relay that publishes its rows (see `outbox relay --help`).
    #[command(subcommand)]
    Outbox(OutboxCommand),
}

#[derive(Debug, Subcommand)]
pub(crate) enum OutboxCommand {
    /// Publish the outbox table's events (WORKER_DB_SCHEMA) to the exchange until SIGINT/SIGTERM,
    /// without consuming. Several relays may run at once; settings from WORKER_OUTBOX_*.
    #[command(
        after_help = "Examples:\n  {bin} outbox relay\n  WORKER_OUTBOX=false {bin} run    # workers without a relay of their own"
    )]
    Relay,
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// Once every handler consumes, publish the demo burst (see `demo --help`).
    #[arg(long)]
    pub(crate) demo: bool,
}

#[derive(Debug, Args)]
pub(crate) struct JsonArgs {
    /// Print JSON for scripts instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct PublishArgs {
    /// The event type: the routing key every handler of the type is bound with.
    pub(crate) event_type: String,
    /// The JSON body; read from stdin when left out or `-`.
    pub(crate) body: Option<String>,
    /// The event id (`message_id`); `evt_` and 16 random hex digits when left out.
    #[arg(long)]
    pub(crate) id: Option<String>,
    /// A header, as `NAME=VALUE` (repeat for several; `traceparent=...` joins that trace).
    #[arg(long = "header", value_name = "NAME=VALUE")]
    pub(crate) headers: Vec<String>,
    /// Publish the body even when it is not JSON.
    #[arg(long)]
    pub(crate) raw: bool,
    /// Print JSON for scripts instead of a line.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct TopologyArgs {
    /// Declare the exchange, queues and bindings now (idempotent), without consuming.
    #[arg(long)]
    pub(crate) declare: bool,
    /// Print JSON for scripts instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum DlqCommand {
    /// List dead letters, oldest first, with why they failed. Leaves the queue unchanged.
    #[command(
        after_help = "Examples:\n  {bin} dlq list\n  {bin} dlq list --trace-id 4bf92f35          # a prefix is enough\n  {bin} dlq list --handler charge-on-order-placed --since 2h\n  {bin} dlq list --error-kind poison --json | jq .failureMetadata.lastError"
    )]
    List(ListArgs),
    /// Show one dead letter in full: the error, the decoded payload, headers and properties.
    #[command(
        after_help = "Examples:\n  {bin} dlq show evt_8f3a\n  {bin} dlq show evt_8f3a --json"
    )]
    Show(ShowArgs),
    /// Count dead letters by handler and by failure fingerprint (error with numbers and ids
    /// masked): one big group is a bug, many small transient ones an outage.
    #[command(after_help = "Examples:\n  {bin} dlq stats\n  {bin} dlq stats --since 1h --json")]
    Stats(StatsArgs),
    /// Republish dead letters to their handler's queue exactly as the producer sent them
    /// (attempts reset, trace continued); each entry leaves the DLQ only after the broker
    /// confirmed its copy.
    #[command(
        after_help = "Examples:\n  {bin} dlq replay evt_8f3a evt_91c2\n  {bin} dlq replay --trace-id 4bf92f35 --dry-run\n  {bin} dlq replay --handler charge-on-order-placed --error-kind retryable --rate 20\n  {bin} dlq replay --fingerprint \"retryable IssuerDown: issuer unavailable\" --since 2026-12-04T03:00:00Z --until 2026-12-04T04:00:00Z\n  {bin} dlq replay evt_8f3a --payload fixed.json\n  {bin} dlq replay --all"
    )]
    Replay(ReplayArgs),
    /// Remove dead letters for good. Without --yes it only says what it would remove.
    #[command(
        after_help = "Examples:\n  {bin} dlq purge evt_8f3a             # shows what would go\n  {bin} dlq purge evt_8f3a --yes\n  {bin} dlq purge --error-kind poison --since 7d --yes"
    )]
    Purge(PurgeArgs),
    /// Move every handler's dead letters into the dead-letter store, the `dead_letters` table of
    /// the worker's schema (created if missing), acking each batch only after it is stored. Runs
    /// until stopped (SIGTERM, Ctrl-C) or, with --until-empty, until the queues stay empty.
    #[command(after_help = "Examples:\n  {bin} dlq ingest\n  {bin} dlq ingest --until-empty")]
    Ingest(IngestArgs),
}

#[derive(Debug, Args)]
pub(crate) struct IngestArgs {
    /// Stop once no dead letter arrived for a second on any queue.
    #[arg(long)]
    pub(crate) until_empty: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum KindArg {
    Poison,
    Retryable,
}

/// A duration back from now (`30s`, `15m`, `2h`, `7d`) or an RFC 3339 time
/// (`2026-12-04T03:00:00Z`).
fn parse_since(value: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(time) = DateTime::parse_from_rfc3339(value) {
        return Ok(time.with_timezone(&Utc));
    }
    let duration = worker_core::transport::config::parse_duration(value)
        .map_err(|e| format!("{e}; or give a time such as 2026-12-04T03:00:00Z"))?;
    let duration = chrono::Duration::from_std(duration).map_err(|e| e.to_string())?;
    Ok(Utc::now() - duration)
}

#[derive(Debug, Clone, Args)]
pub(crate) struct FilterArgs {
    /// Only this handler's dead letters (repeatable).
    #[arg(long = "handler", value_name = "NAME")]
    pub(crate) handlers: Vec<String>,
    /// Only entries whose trace id starts with this (case-insensitive).
    #[arg(long, value_name = "PREFIX")]
    pub(crate) trace_id: Option<String>,
    /// Only this event id (repeatable).
    #[arg(long = "event-id", value_name = "ID")]
    pub(crate) event_ids: Vec<String>,
    /// Only this event type.
    #[arg(long, value_name = "TYPE")]
    pub(crate) event_type: Option<String>,
    /// Only poison messages or only exhausted retries.
    #[arg(long, value_enum)]
    pub(crate) error_kind: Option<KindArg>,
    /// Only entries whose last failure is this recent (30s, 15m, 2h, 7d) or at or after
    /// this time (2026-12-04T03:00:00Z).
    #[arg(long, value_name = "AGE|TIME", value_parser = parse_since)]
    pub(crate) since: Option<DateTime<Utc>>,
    /// Only entries whose last failure is older than this (2h) or before this time; with
    /// --since, a time range.
    #[arg(long, value_name = "AGE|TIME", value_parser = parse_since)]
    pub(crate) until: Option<DateTime<Utc>>,
    /// Only this failure group, as `dlq stats` prints it (e.g. "poison InvalidAmount: -N").
    #[arg(long, value_name = "GROUP")]
    pub(crate) fingerprint: Option<String>,
    /// Only dead letters in this state (the store only, not WORKER_DLQ_STORE=off; default:
    /// pending).
    #[arg(long, value_enum)]
    pub(crate) status: Option<StatusArg>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum StatusArg {
    Pending,
    Replayed,
    Purged,
}

impl FilterArgs {
    pub(crate) fn filter(&self, extra_ids: &[String]) -> Filter {
        Filter {
            handlers: self.handlers.clone(),
            event_ids: self.event_ids.iter().chain(extra_ids).cloned().collect(),
            trace_id: self.trace_id.clone(),
            event_type: self.event_type.clone(),
            error_kind: self.error_kind.map(|k| match k {
                KindArg::Poison => ErrorKind::Poison,
                KindArg::Retryable => ErrorKind::Retryable,
            }),
            since: self.since,
            until: self.until,
            fingerprint: self.fingerprint.clone(),
            status: self.status.map(|s| match s {
                StatusArg::Pending => RowStatus::Pending,
                StatusArg::Replayed => RowStatus::Replayed,
                StatusArg::Purged => RowStatus::Purged,
            }),
            limit: None,
        }
    }
}

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    pub(crate) filters: FilterArgs,
    /// Show at most this many entries.
    #[arg(long)]
    pub(crate) limit: Option<usize>,
    /// One full dead-letter record per line, as JSON (as stored in the DLQ), instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ShowArgs {
    /// The event id (`message_id`).
    pub(crate) event_id: String,
    /// Only in this handler's DLQ (repeatable).
    #[arg(long = "handler", value_name = "NAME")]
    pub(crate) handlers: Vec<String>,
    /// The full record(s) as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct StatsArgs {
    #[command(flatten)]
    pub(crate) filters: FilterArgs,
    /// JSON instead of tables.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `N` or `N/s`: replays per second.
fn parse_rate(value: &str) -> Result<f64, String> {
    let number = value.trim().trim_end_matches("/s");
    match number.parse::<f64>() {
        Ok(rate) if rate > 0.0 && rate.is_finite() => Ok(rate),
        _ => Err("expected a positive number of replays per second, e.g. 10 or 10/s".into()),
    }
}

#[derive(Debug, Args)]
pub(crate) struct ReplayArgs {
    /// Event ids to replay.
    #[arg(value_name = "EVENT_ID")]
    pub(crate) ids: Vec<String>,
    /// Replay every dead letter (of the --handler ones, if given).
    #[arg(long)]
    pub(crate) all: bool,
    #[command(flatten)]
    pub(crate) filters: FilterArgs,
    /// Say what would be replayed; change nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// At most this many replays per second (e.g. 10 or 10/s).
    #[arg(long, value_name = "N/s", value_parser = parse_rate)]
    pub(crate) rate: Option<f64>,
    /// Replay one dead letter with this corrected payload (a JSON file) instead of the
    /// producer's; the store keeps the original and records what changed (the store only,
    /// not WORKER_DLQ_STORE=off).
    #[arg(long, value_name = "FILE")]
    pub(crate) payload: Option<std::path::PathBuf>,
    /// Replay dead letters that failed longer ago than the dedup retention
    /// (WORKER_DEDUP_RETENTION): their dedup rows may be gone, so an event that was in fact
    /// processed would run again.
    #[arg(long)]
    pub(crate) force: bool,
    /// One JSON line per entry instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct PurgeArgs {
    /// Event ids to remove.
    #[arg(value_name = "EVENT_ID")]
    pub(crate) ids: Vec<String>,
    /// Every dead letter (of the --handler ones, if given).
    #[arg(long)]
    pub(crate) all: bool,
    #[command(flatten)]
    pub(crate) filters: FilterArgs,
    /// Really remove them.
    #[arg(long)]
    pub(crate) yes: bool,
    /// One JSON line per entry instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
        command("my-worker").debug_assert();
    }

    /// The `--help` text of the subcommand at `path`, for a binary started as `program`.
    fn help(program: &str, path: &[&str]) -> String {
        let args = std::iter::once(program)
            .chain(path.iter().copied())
            .chain(["--help"]);
        match parse(args) {
            Ok(cli) => panic!("--help parsed as a command: {cli:?}"),
            Err(error) => {
                assert_eq!(error.kind(), clap::error::ErrorKind::DisplayHelp);
                error.render().to_string()
            }
        }
    }

    /// Every subcommand path below `command`, `command` itself (the empty path) first.
    fn paths(command: &clap::Command, prefix: &[String], found: &mut Vec<Vec<String>>) {
        found.push(prefix.to_vec());
        for subcommand in command.get_subcommands() {
            let mut path = prefix.to_vec();
            path.push(subcommand.get_name().to_owned());
            paths(subcommand, &path, found);
        }
    }

    #[test]
    fn help_examples_use_the_binary_s_own_name() {
        let list = help("/opt/billing/bin/my-worker", &["dlq", "list"]);
        assert!(list.contains("  my-worker dlq list\n"), "{list}");
        assert!(
            list.contains("my-worker dlq list --trace-id 4bf92f35"),
            "{list}"
        );
        assert!(!list.contains("order-worker"), "{list}");

        let mut all = Vec::new();
        paths(&Cli::command(), &[], &mut all);
        assert!(all.len() > 10, "{all:?}");
        for path in &all {
            let path: Vec<&str> = path.iter().map(String::as_str).collect();
            let text = help("my-worker", &path);
            for wrong in ["order-worker", BIN] {
                assert!(
                    !text.contains(wrong),
                    "`my-worker {} --help` shows {wrong:?}:\n{text}",
                    path.join(" ")
                );
            }
            if let Some((_, examples)) = text.split_once("Examples:\n") {
                for line in examples.lines().take_while(|line| line.starts_with("  ")) {
                    let line = line.trim_start();
                    assert!(
                        line.starts_with("my-worker") || line.contains(" my-worker "),
                        "`my-worker {} --help`: an example without the binary's name: {line}",
                        path.join(" ")
                    );
                }
            }
        }
        let run = help("my-worker", &[]);
        assert!(run.contains("my-worker run --demo"), "{run}");
        assert!(run.contains("Usage: my-worker"), "{run}");
    }

    #[test]
    fn the_binary_s_name_is_its_file_name_without_extension() {
        let name = |program: &str| bin_name(Some(OsStr::new(program)));
        assert_eq!(name("./target/release/billing-worker"), "billing-worker");
        assert_eq!(name("billing-worker.exe"), "billing-worker");
        assert_eq!(name("order-worker"), "order-worker");
        assert_eq!(name(""), FALLBACK_BIN);
        assert_eq!(bin_name(None), FALLBACK_BIN);
    }

    #[test]
    fn version_names_the_binary_and_the_framework() {
        let error = parse(["billing-worker", "--version"]).expect_err("--version exits");
        assert_eq!(error.kind(), clap::error::ErrorKind::DisplayVersion);
        assert_eq!(
            error.to_string(),
            format!(
                "billing-worker (worker-rabbitmq {})\n",
                env!("CARGO_PKG_VERSION")
            )
        );
    }
}
