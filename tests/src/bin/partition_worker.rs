//! A worker process running only the partitioned test handler, configured from the environment
//! (`PARTITION_WORKER` labels its log rows).

use worker_core::WorkerConfig;
use worker_rabbitmq::Worker;
use worker_tests::partitioned::sequenced;
use worker_tests::TestEnv;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = WorkerConfig::from_env()?;
    Worker::builder()
        .handler(sequenced)
        .migrations(TestEnv::migrator())
        .config(config)
        .serve()
        .await?;
    Ok(())
}
