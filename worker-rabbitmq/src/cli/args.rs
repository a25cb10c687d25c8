//! The command line, as clap parses it. Every `--help` ends with examples.

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand, ValueEnum};
use worker_core::ErrorKind;

use crate::dlq::Filter;

const EXIT_CODES: &str = "Exit codes: 0 ok, 1 failed, 2 bad usage or configuration, \
3 nothing matched, 4 RabbitMQ or PostgreSQL unreachable.
Configuration comes from the environment (AMQP_URL, DATABASE_URL, WORKER_*), as for `run`.";

/// An event worker. Without a subcommand it runs (consumes until Ctrl-C).
#[derive(Debug, Parser)]
#[command(
    version,
    after_help = "Examples:\n  order-worker                      run the worker\n  order-worker run --demo           run it and publish a demo burst\n  order-worker dlq list --trace-id 4bf92f35\n  order-worker dlq stats\n\nExit codes: 0 ok, 1 failed, 2 bad usage or configuration, 3 nothing matched, 4 RabbitMQ or PostgreSQL unreachable."
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the worker: declare the topology and consume until SIGINT/SIGTERM (the default).
    #[command(
        after_help = "Examples:\n  order-worker run\n  order-worker run --demo     # also publish the demo burst once consuming"
    )]
    Run(RunArgs),
    /// List the registered handlers: event type, queue, dedup, retry policy, concurrency.
    #[command(
        after_help = "Examples:\n  order-worker handlers\n  order-worker handlers --json | jq '.[].name'"
    )]
    Handlers(JsonArgs),
    /// Show the exchange, queues and bindings the worker declares.
    #[command(
        after_help = "Examples:\n  order-worker topology\n  order-worker topology --declare    # create them now, without consuming"
    )]
    Topology(TopologyArgs),
    /// Inspect, replay and purge dead letters (`<handler>.dlq`). Reading never changes the queue.
    #[command(subcommand, after_help = EXIT_CODES)]
    Dlq(DlqCommand),
    /// Publish the application's demo burst to the exchange and say what to look at.
    #[command(
        after_help = "Examples:\n  order-worker demo          # with the worker running in another terminal\n  order-worker run --demo    # both in one command"
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
        after_help = "Examples:\n  order-worker outbox relay\n  WORKER_OUTBOX=false order-worker run    # workers without a relay of their own"
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
        after_help = "Examples:\n  order-worker dlq list\n  order-worker dlq list --trace-id 4bf92f35          # a prefix is enough\n  order-worker dlq list --handler charge-on-order-placed --since 2h\n  order-worker dlq list --error-kind poison --json | jq .failureMetadata.lastError"
    )]
    List(ListArgs),
    /// Show one dead letter in full: the error, the decoded payload, headers and properties.
    #[command(
        after_help = "Examples:\n  order-worker dlq show evt_8f3a\n  order-worker dlq show evt_8f3a --json"
    )]
    Show(ShowArgs),
    /// Count dead letters by handler and by failure fingerprint (error with numbers and ids
    /// masked): one big group is a bug, many small transient ones an outage.
    #[command(
        after_help = "Examples:\n  order-worker dlq stats\n  order-worker dlq stats --since 1h --json"
    )]
    Stats(StatsArgs),
    /// Republish dead letters to their handler's queue exactly as the producer sent them
    /// (attempts reset, trace continued); each entry leaves the DLQ only after the broker
    /// confirmed its copy.
    #[command(
        after_help = "Examples:\n  order-worker dlq replay evt_8f3a evt_91c2\n  order-worker dlq replay --trace-id 4bf92f35 --dry-run\n  order-worker dlq replay --handler charge-on-order-placed --error-kind retryable --rate 20\n  order-worker dlq replay --all"
    )]
    Replay(ReplayArgs),
    /// Remove dead letters for good. Without --yes it only says what it would remove.
    #[command(
        after_help = "Examples:\n  order-worker dlq purge evt_8f3a             # shows what would go\n  order-worker dlq purge evt_8f3a --yes\n  order-worker dlq purge --error-kind poison --since 7d --yes"
    )]
    Purge(PurgeArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum KindArg {
    Poison,
    Retryable,
}

/// A duration back from now: `30s`, `15m`, `2h`, `7d`.
fn parse_since(value: &str) -> Result<DateTime<Utc>, String> {
    let duration = worker_core::transport::config::parse_duration(value)?;
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
    /// Only entries whose last failure is this recent: 30s, 15m, 2h, 7d.
    #[arg(long, value_name = "AGE", value_parser = parse_since)]
    pub(crate) since: Option<DateTime<Utc>>,
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
    /// One full record per line (DESIGN.md §5 field names) instead of a table.
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
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
