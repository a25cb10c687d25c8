//! The worker binary's command line: `run` (the default), `handlers`, `topology`, `dlq ...`,
//! `demo`. Generated from the registered handlers; the application's `main` only calls
//! [`WorkerBuilder::run`](crate::WorkerBuilder::run). The examples in `--help` name the binary as
//! it was started.

mod args;
mod dlq;
mod format;
mod inspect;
mod publish;

use std::ffi::OsString;
use std::process::ExitCode;

use worker_core::ConfigError;
use worker_core::OutboxSettings;
use worker_core::{HandlerSpec, WorkerConfig};

use crate::demo::{DemoError, DemoHook};
use crate::dlq::DlqError;
use crate::error::WorkerError;
use crate::settings::{BrokerSettings, Settings};
use crate::WorkerBuilder;
use args::Command;
pub(crate) use format::Console;

/// Exit codes: 0 success.
pub mod exit {
    /// Something failed (a broker operation, a publish, a record that cannot be replayed).
    pub const FAILED: u8 = 1;
    /// The command line or the configuration is wrong.
    pub const USAGE: u8 = 2;
    /// A `dlq list`, `show`, `replay` or `purge` selection matched no dead letter, or `publish` found no
    /// queue bound for the event type.
    pub const NOTHING_MATCHED: u8 = 3;
    /// RabbitMQ (or PostgreSQL) cannot be reached.
    pub const UNREACHABLE: u8 = 4;
}

/// What a command printed and how it ended (from [`WorkerBuilder::run_with_args`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliOutput {
    /// The process exit code the command would have.
    pub code: u8,
    /// What it printed on stdout.
    pub stdout: String,
    /// What it printed on stderr (errors and warnings).
    pub stderr: String,
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    #[error(transparent)]
    Worker(#[from] WorkerError),
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Dlq(Box<DlqError>),
    #[error(transparent)]
    Demo(#[from] DemoError),
    #[error("no dead letter matches {0}")]
    NothingMatched(String),
    #[error("{0}")]
    Usage(String),
    #[error("no queue is bound for `{event_type}` on exchange `{exchange}`, so the broker returned the event: start the worker (it declares its queues) or run `topology --declare`")]
    Unroutable {
        event_type: String,
        exchange: String,
    },
    #[error(transparent)]
    Publish(#[from] crate::publisher::PublishError),
}

impl From<DlqError> for CliError {
    fn from(error: DlqError) -> Self {
        CliError::Dlq(Box::new(error))
    }
}

impl CliError {
    fn code(&self) -> u8 {
        match self {
            CliError::Worker(
                WorkerError::Connect { .. }
                | WorkerError::Database { .. }
                | WorkerError::Unanswered { .. },
            ) => exit::UNREACHABLE,
            CliError::Worker(
                WorkerError::Config(_)
                | WorkerError::Registry(_)
                | WorkerError::MetricsEndpoint { .. }
                | WorkerError::ConsistentHashPluginMissing { .. },
            )
            | CliError::Config(_)
            | CliError::Usage(_) => exit::USAGE,
            CliError::NothingMatched(_) | CliError::Unroutable { .. } => exit::NOTHING_MATCHED,
            _ => exit::FAILED,
        }
    }
}

/// What every command needs to know about the worker.
pub(crate) struct Setup {
    pub(crate) config: WorkerConfig,
    pub(crate) broker: BrokerSettings,
    pub(crate) outbox: OutboxSettings,
    pub(crate) outbox_switch: Option<bool>,
    pub(crate) specs: Vec<HandlerSpec>,
    pub(crate) demo: Option<DemoHook>,
}

impl Setup {
    fn new(builder: &WorkerBuilder) -> Result<Self, CliError> {
        let (registry, settings, demo) = builder.cli_parts();
        registry.validate().map_err(WorkerError::from)?;
        let settings = match settings {
            Some(settings) => settings.clone(),
            None => Settings::from_env()?,
        };
        let specs = crate::worker::resolve_specs(registry, &settings)?;
        Ok(Self {
            config: settings.worker,
            broker: settings.broker,
            outbox: settings.outbox,
            outbox_switch: settings.outbox_switch,
            specs,
            demo: demo.cloned(),
        })
    }
}

impl Setup {
    /// The settings this command runs with (read once, in [`Setup::new`]).
    pub(crate) fn settings(&self) -> Settings {
        Settings {
            worker: self.config.clone(),
            broker: self.broker.clone(),
            outbox: self.outbox.clone(),
            outbox_switch: self.outbox_switch,
        }
    }
}

/// Parses `args` (the first is the program name) and runs the command.
pub(crate) async fn main<I, T>(builder: WorkerBuilder, args: I, mut console: Console) -> CliOutput
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match args::parse(args) {
        Ok(cli) => cli,
        Err(error) => {
            let code = if error.use_stderr() { exit::USAGE } else { 0 };
            let text = if console.colour {
                error.render().ansi().to_string()
            } else {
                error.render().to_string()
            };
            console.parser_output(text.trim_end(), error.use_stderr());
            return finish(console, code);
        }
    };
    let command = cli
        .command
        .unwrap_or(Command::Run(args::RunArgs { demo: false }));
    let result = dispatch(builder, command, &mut console).await;
    let code = match result {
        Ok(code) => code,
        Err(error) => {
            console.warn(format!("error: {error}"));
            error.code()
        }
    };
    finish(console, code)
}

fn finish(console: Console, code: u8) -> CliOutput {
    CliOutput {
        code,
        stdout: console.out.unwrap_or_default(),
        stderr: console.err.unwrap_or_default(),
    }
}

async fn dispatch(
    builder: WorkerBuilder,
    command: Command,
    console: &mut Console,
) -> Result<u8, CliError> {
    let setup = Setup::new(&builder)?;
    match command {
        // The settings already read, so the worker does not read the environment again.
        Command::Run(args) => {
            let builder = builder.settings(setup.settings());
            inspect::run(builder, setup, args.demo, console).await
        }
        Command::Handlers(args) => inspect::handlers(&setup, args.json, console).await,
        Command::Topology(args) => inspect::topology(&setup, args, console).await,
        Command::Demo(args) => inspect::demo(&setup, args.json, console).await,
        Command::Publish(args) => publish::run(&setup, args, console).await,
        Command::Dlq(command) => dlq::run(&setup, command, console).await,
        Command::Outbox(args::OutboxCommand::Relay) => {
            let _telemetry = worker_core::transport::telemetry::logging::init_with_default(
                &setup.config.consumer,
                crate::spans::DEFAULT_LOG_FILTER,
            );
            crate::relay::Relay::run(setup.settings()).await?;
            Ok(0)
        }
    }
}

/// The command line of a worker binary.
impl WorkerBuilder {
    /// The worker binary's `main`: parses the command line and runs the subcommand — `run`
    /// (the default: [`serve`](Self::serve)), `handlers`, `topology`, `dlq ...` or `demo`
    /// (`--help` lists them). Returns the process exit code.
    ///
    /// ```no_run
    /// # fn worker() -> worker_rabbitmq::WorkerBuilder { unimplemented!() }
    /// #[tokio::main]
    /// async fn main() -> std::process::ExitCode {
    ///     worker().run().await
    /// }
    /// ```
    pub async fn run(self) -> std::process::ExitCode {
        main_process(self).await
    }

    /// Runs the subcommand given by `args` (the first is the program name, as in
    /// `std::env::args`) and returns what it printed and its exit code instead of printing.
    pub async fn run_with_args<I, T>(self, args: I) -> CliOutput
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        main(self, args, Console::capture()).await
    }
}

/// Runs the process's command line and prints to its stdout/stderr.
pub(crate) async fn main_process(builder: WorkerBuilder) -> ExitCode {
    let output = main(builder, std::env::args_os(), Console::terminal()).await;
    ExitCode::from(output.code)
}
