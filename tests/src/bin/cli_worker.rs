//! A worker binary with the scripted handler and the framework's command line, configured from
//! the environment: what an operator runs (`cli_worker dlq replay ...`), for tests that kill it.

use worker_rabbitmq::Worker;
use worker_tests::handlers::scripted;
use worker_tests::TestEnv;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    Worker::builder()
        .handler(scripted)
        .migrations(TestEnv::migrator())
        .run()
        .await
}
