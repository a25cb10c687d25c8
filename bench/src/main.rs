//! `worker-bench`: an honest measuring harness for the framework's throughput, latency and
//! memory, against a bare lapin consumer and a hand-written lapin + sqlx consumer in the same
//! run. See `--help` and the README's "Performance" section.

pub mod cli;
pub mod event;
pub mod harness;
pub mod namespace;
pub mod publish;
pub mod recorder;
pub mod scenario;

use std::process::ExitCode;

use clap::Parser;

/// Any error of the harness; reported and turned into exit code 2.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> ExitCode {
    let args = cli::Args::parse();
    if let Some(scenario) = args.child {
        return match scenario::run_child(&args, scenario, args.namespace.clone()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("scenario {}: {error}", scenario.letter());
                ExitCode::from(2)
            }
        };
    }
    harness::run(args).await
}
