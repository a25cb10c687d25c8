//! PostgreSQL over TLS, against a real server that accepts only TLS (`worker_tests::postgres_tls`:
//! a cluster of the test's own on its own port, `ssl = on`, `hostssl` lines only, a server
//! certificate for `localhost` from a CA the test generates). The worker connects with each
//! `sslmode` in DATABASE_URL: `disable` is refused by the server with an error that says to turn
//! TLS on; `prefer`, `require` and `verify-ca` connect; `verify-full` connects to `localhost` and
//! refuses the certificate when the URL names `127.0.0.1` (not a name in it) or when no CA is
//! given; a user authenticated by client certificate connects with `sslcert`/`sslkey` and is
//! refused without them. One event is processed end to end over TLS.

use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use worker_tests::broker_tls::TestPki;
use worker_tests::handlers::scripted;
use worker_tests::postgres_tls::TlsPostgres;
use worker_tests::{eventually, TestEnv};

/// Starts a worker on `database_url` and stops it again; the start-up error otherwise.
async fn connects(env: &TestEnv, database_url: String) -> Result<(), String> {
    let mut settings = env.settings();
    settings.worker.database_url = database_url;
    let worker = worker_rabbitmq::Worker::builder()
        .handler(scripted)
        .migrations(TestEnv::migrator())
        .settings(settings)
        .start()
        .await
        .map_err(|error| error.to_string())?;
    worker.shutdown().await.map_err(|error| error.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sslmode_against_a_postgres_that_accepts_only_tls() {
    let env = TestEnv::new().await;
    let pki = TestPki::generate(&format!("pg-{}", env.id));
    let server = TlsPostgres::start(&pki, &env.id);
    let ca = pki.path("ca.pem").display().to_string();

    // A plain connection: the server refuses it, and the error says what to change.
    let error = connects(&env, server.url("127.0.0.1", "postgres", "sslmode=disable"))
        .await
        .expect_err("the server accepts only TLS");
    assert!(error.contains("no encryption"), "{error}");
    assert!(
        error.contains("only over TLS: add sslmode=require"),
        "{error}"
    );

    // Encrypted without verification (what managed services' docs call the minimum).
    for mode in ["prefer", "require"] {
        connects(
            &env,
            server.url("127.0.0.1", "postgres", &format!("sslmode={mode}")),
        )
        .await
        .unwrap_or_else(|error| panic!("sslmode={mode}: {error}"));
    }
    // The CA is checked. (The name is checked too, unlike libpq's verify-ca: sqlx 0.8.6 misses
    // rustls' newer name-mismatch error, launchbadge/sqlx#3793, fixed in sqlx 0.9; see the
    // README. So this connects to the certificate's name.)
    connects(
        &env,
        server.url(
            "localhost",
            "postgres",
            &format!("sslmode=verify-ca&sslrootcert={ca}"),
        ),
    )
    .await
    .expect("verify-ca with the CA");
    let error = connects(
        &env,
        server.url("localhost", "postgres", "sslmode=verify-ca"),
    )
    .await
    .expect_err("verify-ca refuses a certificate from a CA it was not given");
    assert!(error.contains("UnknownIssuer"), "{error}");
    // The CA and the name: the certificate is for `localhost`.
    connects(
        &env,
        server.url(
            "localhost",
            "postgres",
            &format!("sslmode=verify-full&sslrootcert={ca}"),
        ),
    )
    .await
    .expect("verify-full for the certificate's name");
    let error = connects(
        &env,
        server.url(
            "127.0.0.1",
            "postgres",
            &format!("sslmode=verify-full&sslrootcert={ca}"),
        ),
    )
    .await
    .expect_err("verify-full refuses a certificate for another host name");
    assert!(
        error.contains("certificate not valid for name \"127.0.0.1\""),
        "{error}"
    );
    assert!(
        error.contains("TLS failed: check sslmode, sslrootcert"),
        "{error}"
    );
    let error = connects(
        &env,
        server.url("localhost", "postgres", "sslmode=verify-full"),
    )
    .await
    .expect_err("verify-full refuses a certificate from a CA it was not given");
    assert!(error.contains("UnknownIssuer"), "{error}");

    // A user the server authenticates by client certificate (common name `worker`).
    let verified = format!("sslmode=verify-full&sslrootcert={ca}");
    let error = connects(&env, server.url("localhost", "worker", &verified))
        .await
        .expect_err("no client certificate, no connection");
    assert!(
        error.contains("add sslcert=<file> and sslkey=<file>"),
        "{error}"
    );
    let with_identity = format!(
        "{verified}&sslcert={}&sslkey={}",
        pki.path("client.pem").display(),
        pki.path("client.key").display()
    );
    connects(&env, server.url("localhost", "worker", &with_identity))
        .await
        .expect("the client certificate authenticates `worker`");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_is_processed_with_its_transaction_over_tls() {
    let mut env = TestEnv::new().await;
    let pki = TestPki::generate(&format!("pg-{}", env.id));
    let server = TlsPostgres::start(&pki, &env.id);
    let url = server.url(
        "localhost",
        "worker",
        &format!(
            "sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
            pki.path("ca.pem").display(),
            pki.path("client.pem").display(),
            pki.path("client.key").display()
        ),
    );
    env.config.database_url = url.clone();
    env.config.consumer = format!("worker-tests-{}", env.id);
    let worker = worker_rabbitmq::Worker::builder()
        .handler(scripted)
        .migrations(TestEnv::migrator())
        .settings(env.settings())
        .start()
        .await
        .expect("the worker starts on the TLS database");
    env.publish_json("Scripted", "evt_pg_tls", json!({})).await;
    let tls = PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .expect("the test's own connection over TLS");
    let effects = format!(
        "SELECT count(*) FROM \"{}\".effects WHERE event_id = 'evt_pg_tls'",
        env.id
    );
    eventually("the event's effect is committed over TLS", || async {
        sqlx::query_scalar::<_, i64>(&effects)
            .fetch_one(&tls)
            .await
            .is_ok_and(|n| n == 1)
    })
    .await;
    // Every connection of the worker's pool is encrypted (the server would refuse any other).
    let (connections, encrypted): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE s.ssl) FROM pg_stat_activity a \
         JOIN pg_stat_ssl s USING (pid) WHERE a.usename = 'worker' AND a.pid <> pg_backend_pid()",
    )
    .fetch_one(&tls)
    .await
    .expect("read pg_stat_ssl");
    assert!(connections > 0, "the worker holds connections");
    assert_eq!(connections, encrypted, "all of them over TLS");
    worker.shutdown().await.expect("shutdown");
    tls.close().await;
    drop(server);
}
