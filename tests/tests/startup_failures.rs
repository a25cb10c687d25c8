//! Start-up failures are quick and say why: an unreachable database or broker is reported within
//! a couple of seconds with the cause (exit 4), a malformed URL is a configuration error naming
//! its variable (exit 2).

use std::time::{Duration, Instant};

use tokio::process::Command;
use worker_rabbitmq::{Settings, Worker, WorkerError};
use worker_tests::handlers::scripted;
use worker_tests::{closed_port, silent_listener, TestEnv};

/// Runs the test worker binary's `run` with these variables; returns (exit code, stderr, time).
async fn run_cli(vars: &[(&str, String)]) -> (Option<i32>, String, Duration) {
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_cli_worker"))
        .arg("run")
        .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
        .env("WORKER_METRICS_ADDR", "off")
        .env("RUST_LOG", "error")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), output)
        .await
        .expect("the worker gave up within a minute")
        .expect("the worker binary runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test]
async fn a_refused_database_is_reported_at_once_with_its_cause() {
    let env = TestEnv::new().await;
    let mut settings: Settings = env.settings();
    settings.worker.database_url =
        format!("postgres://postgres@127.0.0.1:{}/postgres", closed_port());
    let started = Instant::now();
    let error = Worker::builder()
        .handler(scripted)
        .settings(settings)
        .start()
        .await
        .expect_err("no database there");
    let took = started.elapsed();
    assert!(matches!(error, WorkerError::Database { .. }), "{error:?}");
    let message = error.to_string();
    assert!(
        message.contains("cannot connect to PostgreSQL at postgres://postgres:***@127.0.0.1:")
            && message.to_lowercase().contains("connection refused"),
        "{message}"
    );
    // Before, the pool retried for its 10 s acquire timeout and said only "pool timed out".
    assert!(took < Duration::from_secs(8), "took {took:?}");
}

#[tokio::test]
async fn a_silent_database_or_broker_is_given_up_on_after_the_connect_timeout() {
    let env = TestEnv::new().await;
    let (port, _listener) = silent_listener().await;
    let mut settings: Settings = env.settings();
    settings.worker.database_url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let error = Worker::builder()
        .handler(scripted)
        .settings(settings)
        .start()
        .await
        .expect_err("the database never answers");
    assert_eq!(
        error.to_string(),
        format!(
            "PostgreSQL at postgres://postgres:***@127.0.0.1:{port}/postgres did not answer within 2s (is it running, and reachable from here? set DATABASE_URL)"
        )
    );

    let mut settings: Settings = env.settings();
    settings.broker.url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    let error = Worker::builder()
        .handler(scripted)
        .settings(settings)
        .start()
        .await
        .expect_err("the broker never answers");
    assert_eq!(
        error.to_string(),
        format!(
            "RabbitMQ at amqp://guest:***@127.0.0.1:{port}/%2f did not answer within 2s (is it running, and reachable from here? set AMQP_URL)"
        )
    );
}

#[tokio::test]
async fn the_command_line_exits_4_for_an_unreachable_service_and_2_for_a_malformed_url() {
    let env = TestEnv::new().await;
    let mut vars = env.worker_env();
    vars.retain(|(k, _)| *k != "DATABASE_URL" && *k != "AMQP_URL");

    let mut refused = vars.clone();
    refused.push((
        "DATABASE_URL",
        format!("postgres://postgres@127.0.0.1:{}/postgres", closed_port()),
    ));
    let (code, stderr, took) = run_cli(&refused).await;
    assert_eq!(code, Some(4), "{stderr}");
    assert!(
        stderr.to_lowercase().contains("connection refused"),
        "{stderr}"
    );
    assert!(took < Duration::from_secs(20), "took {took:?}");

    let mut refused = vars.clone();
    refused.push((
        "AMQP_URL",
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", closed_port()),
    ));
    let (code, stderr, _) = run_cli(&refused).await;
    assert_eq!(code, Some(4), "{stderr}");
    assert!(
        stderr.contains("cannot connect to RabbitMQ at amqp://guest:***@127.0.0.1:"),
        "{stderr}"
    );

    for (var, value) in [
        ("AMQP_URL", "rabbit.internal:5672"),
        ("AMQP_URL", "http://guest:secret@127.0.0.1:5672/"),
        ("DATABASE_URL", "db.internal:5432"),
        ("DATABASE_URL", "postgres://postgres:secret@[::1/postgres"),
    ] {
        let mut malformed = vars.clone();
        malformed.push((var, value.to_owned()));
        let (code, stderr, _) = run_cli(&malformed).await;
        assert_eq!(code, Some(2), "{var}={value}: {stderr}");
        assert!(
            stderr.contains(&format!("{var}=")) && stderr.contains("is invalid"),
            "{var}={value}: {stderr}"
        );
        assert!(
            !stderr.contains("secret"),
            "the password is redacted: {stderr}"
        );
    }
}

#[tokio::test]
async fn a_busy_metrics_port_is_exit_2_naming_the_setting() {
    let env = TestEnv::new().await;
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = busy.local_addr().expect("address");
    let output = Command::new(env!("CARGO_BIN_EXE_cli_worker"))
        .arg("run")
        .envs(env.worker_env())
        .env("WORKER_METRICS_ADDR", addr.to_string())
        .env("RUST_LOG", "error")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), output)
        .await
        .expect("the worker gave up within a minute")
        .expect("the worker binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot serve metrics on {addr}"))
            && stderr.contains("set WORKER_METRICS_ADDR to another address, or `off`"),
        "{stderr}"
    );
}

#[tokio::test]
async fn an_application_name_that_cannot_prefix_queue_names_is_exit_2() {
    let env = TestEnv::new().await;
    let mut vars = env.worker_env();
    vars.push(("WORKER_APP", "billing app".into()));
    let (code, stderr, _) = run_cli(&vars).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("WORKER_APP=\"billing app\" is invalid"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_refused_connection_is_one_line_with_the_default_log_filter() {
    let env = TestEnv::new().await;
    let mut vars = env.worker_env();
    vars.retain(|(k, _)| *k != "AMQP_URL");
    let output = Command::new(env!("CARGO_BIN_EXE_cli_worker"))
        .arg("run")
        .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
        .env(
            "AMQP_URL",
            "amqp://guest:guest@127.0.0.1:5672/no-such-vhost",
        )
        .env("WORKER_METRICS_ADDR", "off")
        .env_remove("RUST_LOG")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), output)
        .await
        .expect("the worker gave up within a minute")
        .expect("the worker binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(4), "{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("ERROR") || l.starts_with("error"))
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "one error line, the worker's own:\n{stderr}"
    );
    assert!(
        errors[0].starts_with("error: cannot connect to RabbitMQ")
            && errors[0].contains("vhost no-such-vhost not found"),
        "{stderr}"
    );
}
