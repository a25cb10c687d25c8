//! The command line.

use clap::{Parser, ValueEnum};
use worker_core::transport::config::DEFAULT_DATABASE_URL;
use worker_rabbitmq::settings::DEFAULT_AMQP_URL;

/// Measures the framework against bare lapin and a hand-written lapin + sqlx consumer.
///
/// Five scenarios run one after the other, each in a child process of this binary (so the peak
/// RSS reported is that scenario's alone); a-d each on its own queue in a fresh namespace
/// (exchange `events.<id>`, queues `<id>.*`, schema `<id>`) that is removed at the end:
///
///   a  bare lapin: decode + ack per message, the consume loop in a spawned task
///   b  the framework: `#[handler]` no-op handler, no dedup
///   c  hand-written lapin + sqlx: per message one transaction with the dedup insert
///      (INSERT .. ON CONFLICT DO NOTHING RETURNING) and one business insert
///   d  the framework with `dedup` and the same business insert
///   h  the framework's test harness, in memory (`worker_rabbitmq::testing`): b's no-op
///      handler, no dedup, no broker, no database; --messages events (no duplicates) are
///      published into a `TestHarness` and delivered by `run_until_idle`, and the time of both
///      is measured (target >= 50,000 events/s); it has no latency (`-` in the table).
///      `--scenarios h` alone needs neither RabbitMQ nor PostgreSQL.
///
/// By default all events are published first (a backlog) and then consumed; with `--rate` they
/// are published at that rate while the scenario consumes. Latency is publish-to-done: the
/// publish time travels in the `x-bench-published-us` header; done is after the ack (a, c) or the
/// framework's `Observer::settled` (b, d). Exits 1 when a check fails: every delivery settled
/// and acked, queues empty, and for c and d exactly one business row and one dedup row per event
/// id (duplicates are published on purpose, see `--duplicates`); for h, exactly one delivery per
/// event, each `Outcome::Processed`.
#[derive(Debug, Clone, Parser)]
#[command(name = "worker-bench", verbatim_doc_comment)]
pub struct Args {
    /// Distinct events published per scenario.
    #[arg(long, default_value_t = 10_000)]
    pub messages: u64,

    /// Extra copies (same message_id) of the first events, in percent of --messages, published
    /// after the originals: a consumer without working dedup fails the check of c and d (h
    /// publishes none).
    #[arg(long, default_value_t = 1, value_name = "PERCENT")]
    pub duplicates: u64,

    /// Deliveries in flight: the prefetch of every consumer and the concurrency of c and of the
    /// framework's handlers; the same for all scenarios.
    #[arg(long, default_value_t = 16)]
    pub in_flight: u16,

    /// The framework's `WORKER_BATCH_SIZE` for (d): most deliveries per dedup transaction
    /// (default: the framework's, half of --in-flight up to 50; 1 turns batching off).
    #[arg(long)]
    pub batch_size: Option<usize>,

    /// The framework's `WORKER_BATCH_LINGER` for (d), in milliseconds (default 0: never wait).
    #[arg(long, default_value_t = 0, value_name = "MS")]
    pub batch_linger_ms: u64,

    /// Publish at this many messages per second while consuming (no backlog), to measure
    /// latency at a steady load; e.g. `--rate 500 --messages 5000`.
    #[arg(long, value_name = "MSG_PER_S")]
    pub rate: Option<u32>,

    /// Which scenarios to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "a,b,c,d,h")]
    pub scenarios: Vec<Scenario>,

    /// Approximate size of each JSON payload in bytes.
    #[arg(long, default_value_t = 200)]
    pub payload_bytes: usize,

    /// Give up on a scenario that has not finished after this many seconds.
    #[arg(long, default_value_t = 900, value_name = "SECONDS")]
    pub timeout: u64,

    /// RabbitMQ. (`--help` does not show the variable's value: it may hold a password.)
    #[arg(long, env = "AMQP_URL", hide_env_values = true, default_value = DEFAULT_AMQP_URL)]
    pub amqp_url: String,

    /// PostgreSQL. (`--help` does not show the variable's value: it may hold a password.)
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,

    /// Internal: run one scenario's consumer in this process and report on stdout.
    #[arg(long, hide = true)]
    pub child: Option<Scenario>,

    /// Internal: the namespace id the child consumes in.
    #[arg(long, hide = true)]
    pub namespace: Option<String>,
}

impl Args {
    /// Copies of earlier event ids published after the originals.
    pub fn duplicate_count(&self) -> u64 {
        self.messages * self.duplicates / 100
    }

    /// Deliveries per scenario: the events plus their duplicates.
    pub fn deliveries(&self) -> u64 {
        self.messages + self.duplicate_count()
    }
}

/// One of the measured consumers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Bare lapin: decode + ack.
    A,
    /// The framework, no-op handler.
    B,
    /// Hand-written lapin + sqlx with dedup.
    C,
    /// The framework with dedup.
    D,
    /// The framework's test harness, in memory: no-op handler, no dedup.
    H,
}

impl Scenario {
    /// The letter used on the command line.
    pub fn letter(self) -> &'static str {
        match self {
            Self::A => "a",
            Self::B => "b",
            Self::C => "c",
            Self::D => "d",
            Self::H => "h",
        }
    }

    /// A line for the table.
    pub fn title(self) -> &'static str {
        match self {
            Self::A => "(a) bare lapin, ack each",
            Self::B => "(b) framework, no-op",
            Self::C => "(c) lapin+sqlx, tx/msg",
            Self::D => "(d) framework, dedup",
            Self::H => "(h) test harness, no-op",
        }
    }

    /// Whether the scenario writes rows that the exactly-once check counts.
    pub fn writes(self) -> bool {
        matches!(self, Self::C | Self::D)
    }

    /// Whether the scenario runs against RabbitMQ (and needs the namespace); h runs in memory.
    pub fn uses_broker(self) -> bool {
        !matches!(self, Self::H)
    }
}
