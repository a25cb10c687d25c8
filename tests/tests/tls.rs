//! `amqps://` against RabbitMQ's own TLS listener (Erlang `ssl`, not a stand-in): each test starts
//! a listener on a free port of the shared broker at runtime, with a server certificate signed by
//! a CA the test generates, and stops it at the end (`worker_tests::broker_tls`). The worker
//! verifies the broker's certificate against the configured CA file; in the mutual-TLS test the
//! broker requires the worker's client certificate (`verify_peer`, `fail_if_no_peer_cert`). Each
//! test processes an event end to end over TLS, and checks the refusals: no CA, no client
//! certificate. Errors never show the password.

use serde_json::json;
use worker_tests::broker_tls::{BrokerTlsListener, ClientAuth, TestPki, CLIENT_IDENTITY_PASSWORD};
use worker_tests::handlers::scripted;
use worker_tests::{eventually, TestEnv};

/// The client-provided names of the broker's connections that came in over TLS.
fn tls_connection_names() -> Vec<String> {
    let output = std::process::Command::new("rabbitmqctl")
        .args([
            "list_connections",
            "-q",
            "--no-table-headers",
            "ssl",
            "client_properties",
        ])
        .output()
        .expect("rabbitmqctl list_connections");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.trim_start().starts_with("true"))
        .map(str::to_owned)
        .collect()
}

async fn start(env: &TestEnv) -> Result<worker_rabbitmq::RunningWorker, String> {
    worker_rabbitmq::Worker::builder()
        .handler(scripted)
        .migrations(TestEnv::migrator())
        .settings(env.settings())
        .start()
        .await
        .map_err(|error| error.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_verifies_the_brokers_certificate_against_its_ca_file() {
    let mut env = TestEnv::new().await;
    env.config.consumer = format!("worker-tests-{}", env.id);
    let pki = TestPki::generate(&env.id);
    let listener = BrokerTlsListener::start(&pki, ClientAuth::None);
    env.broker.url = format!("amqps://guest:guest@localhost:{}/%2f", listener.port);

    // Without the CA the broker's certificate is not trusted: start-up fails with a clear,
    // redacted error.
    let error = start(&env)
        .await
        .expect_err("an untrusted certificate is refused");
    assert!(
        error.contains("cannot connect to RabbitMQ at amqps://guest:***@localhost:"),
        "{error}"
    );
    assert!(
        !error.contains(":guest@"),
        "the password never appears: {error}"
    );

    env.broker.tls.ca_file = Some(pki.path("ca.pem"));
    // A trusted certificate for another name is refused too: it names `localhost`, not the
    // address the URL uses.
    let by_address = env.broker.url.replace("@localhost:", "@127.0.0.1:");
    let mut settings = env.settings();
    settings.broker.url = by_address;
    let error = worker_rabbitmq::Worker::builder()
        .handler(scripted)
        .migrations(TestEnv::migrator())
        .settings(settings)
        .start()
        .await
        .expect_err("a certificate for another host name is refused")
        .to_string();
    assert!(
        error.contains("cannot connect to RabbitMQ at amqps://"),
        "{error}"
    );

    let worker = start(&env).await.expect("starts over TLS");
    assert!(
        tls_connection_names()
            .iter()
            .any(|line| line.contains(&env.config.consumer)),
        "the broker lists the worker's connection as TLS: {:?}",
        tls_connection_names()
    );
    env.publish_json("Scripted", "evt_tls", json!({})).await;
    eventually("the event is consumed over TLS", || async {
        env.effects("evt_tls").await == 1
    })
    .await;
    worker.shutdown().await.unwrap();
    drop(listener);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_presents_its_client_certificate_to_a_broker_that_requires_one() {
    let mut env = TestEnv::new().await;
    env.config.consumer = format!("worker-tests-{}", env.id);
    let pki = TestPki::generate(&env.id);
    let listener = BrokerTlsListener::start(&pki, ClientAuth::Required);
    env.broker.url = format!("amqps://guest:guest@localhost:{}/%2f", listener.port);
    env.broker.tls.ca_file = Some(pki.path("ca.pem"));

    // Without the client identity the broker refuses the handshake.
    let error = start(&env)
        .await
        .expect_err("no client certificate, no connection");
    assert!(error.contains("cannot connect to RabbitMQ"), "{error}");

    env.broker.tls.client_identity = Some(pki.path("client.p12"));
    env.broker.tls.client_identity_password = Some(worker_core::transport::config::Secret(
        CLIENT_IDENTITY_PASSWORD.into(),
    ));
    assert!(
        !format!("{:?}", env.settings()).contains(CLIENT_IDENTITY_PASSWORD),
        "the password never shows in Debug output"
    );
    let worker = start(&env)
        .await
        .expect("starts with its client certificate");
    env.publish_json("Scripted", "evt_mtls", json!({})).await;
    eventually("the event is consumed over mutual TLS", || async {
        env.effects("evt_mtls").await == 1
    })
    .await;
    worker.shutdown().await.unwrap();
    drop(listener);
}
