//! A worker process running only the partitioned test handler, configured from the environment
//! (`PARTITION_WORKER` labels its log rows).

use worker_rabbitmq::{Settings, Worker};
use worker_tests::partitioned::sequenced;
use worker_tests::TestEnv;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let settings = Settings::from_env()?;
    Worker::builder()
        .handler(sequenced)
        .migrations(TestEnv::migrator())
        .settings(settings)
        .serve()
        .await?;
    Ok(())
}
