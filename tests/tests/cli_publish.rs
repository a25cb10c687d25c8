//! `publish`: a test event as a producer would send it, processed by the running worker; an
//! event no queue is bound for is an error, not a silent loss.

use serde_json::Value;
use worker_rabbitmq::cli::CliOutput;
use worker_rabbitmq::{Worker, WorkerBuilder};
use worker_tests::handlers::scripted;
use worker_tests::{eventually, TestEnv};

fn builder(env: &TestEnv) -> WorkerBuilder {
    Worker::builder()
        .handler(scripted)
        .migrations(TestEnv::migrator())
        .settings(env.settings())
}

async fn cli(env: &TestEnv, args: &[&str]) -> CliOutput {
    let args = std::iter::once("my-worker").chain(args.iter().copied());
    builder(env).run_with_args(args).await
}

#[tokio::test]
async fn an_event_no_queue_is_bound_for_is_reported_not_lost() {
    let env = TestEnv::new().await;
    let out = cli(&env, &["publish", "Scripted", "{}"]).await;
    assert_eq!(out.code, 3, "{out:?}");
    assert!(
        out.stderr.contains(&format!(
            "no queue is bound for `Scripted` on exchange `{}`, so the broker returned the event: start the worker (it declares its queues) or run `topology --declare`",
            env.broker.exchange
        )),
        "{out:?}"
    );

    let out = cli(&env, &["publish", "Scripted", "not json"]).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("the body is not JSON"), "{out:?}");
    let out = cli(&env, &["publish", "Scripted", "{}", "--header", "oops"]).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("expected NAME=VALUE"), "{out:?}");
}

#[tokio::test]
async fn a_published_event_is_processed_with_its_id_headers_and_trace() {
    let env = TestEnv::new().await;
    let worker = builder(&env).start().await.expect("worker starts");
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let out = cli(
        &env,
        &[
            "publish",
            "Scripted",
            r#"{"failTimes": 0}"#,
            "--id",
            "evt_cli_1",
            "--header",
            "tenant=acme",
            "--header",
            &format!("traceparent={traceparent}"),
            "--json",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    let line: Value = serde_json::from_str(out.stdout.trim()).expect("one JSON line");
    assert_eq!(line["eventId"], "evt_cli_1");
    assert_eq!(line["eventType"], "Scripted");
    assert_eq!(line["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(line["exchange"], env.broker.exchange.as_str());
    eventually("the event is processed", || async {
        env.effects("evt_cli_1").await == 1
    })
    .await;
    let trace: String = sqlx::query_scalar("SELECT trace_id FROM attempts WHERE event_id = $1")
        .bind("evt_cli_1")
        .fetch_one(&env.pool)
        .await
        .expect("the attempt");
    assert_eq!(trace, "4bf92f3577b34da6a3ce929d0e0e4736");

    // Without --id: a fresh id, and a fresh trace.
    let out = cli(&env, &["publish", "Scripted", "{}"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let printed = out.stdout.trim();
    assert!(
        printed.starts_with("published Scripted evt_")
            && printed.contains(&format!("to `{}` (trace ", env.broker.exchange)),
        "{printed}"
    );
    let event_id = printed
        .split_whitespace()
        .nth(2)
        .expect("the event id")
        .to_owned();
    eventually("the second event is processed", || async {
        env.effects(&event_id).await == 1
    })
    .await;
    worker.shutdown().await.expect("clean stop");
}
