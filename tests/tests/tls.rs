//! `amqps://` with rustls and a CA file: the worker connects through TLS to a local listener whose
//! certificate is signed by a CA the test generates, and consumes as usual. Without the CA file the
//! connection is refused, and the error shows no password.
//!
//! The TLS listener is a TLS-terminating proxy in front of the local RabbitMQ (the broker's own
//! TLS listener would need a broker restart with a changed configuration, which the other tests
//! running in parallel against the same broker would not survive).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, KeyUsagePurpose};
use serde_json::json;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;
use worker_tests::handlers::scripted;
use worker_tests::{eventually, TestEnv};

/// A TLS listener on an ephemeral port that forwards the decrypted stream to RabbitMQ.
async fn tls_listener(config: ServerConfig) -> (u16, Arc<AtomicUsize>) {
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    let handshakes = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&handshakes);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, counted) = (acceptor.clone(), Arc::clone(&counted));
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                counted.fetch_add(1, Ordering::SeqCst);
                let Ok(mut broker) = tokio::net::TcpStream::connect("127.0.0.1:5672").await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut broker).await;
            });
        }
    });
    (port, handshakes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_consumes_over_amqps_with_a_configured_ca() {
    let mut env = TestEnv::new().await;
    // A CA and a server certificate for `localhost`, signed by it.
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::CrlSign,
    ];
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key")).expect("CA");
    let server_key = KeyPair::generate().expect("key");
    let server_cert = CertificateParams::new(vec!["localhost".to_owned()])
        .expect("params")
        .signed_by(&server_key, &ca)
        .expect("server cert");
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let server_config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocols")
        .with_no_client_auth()
        .with_single_cert(
            vec![server_cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
        )
        .expect("server config");
    let (port, handshakes) = tls_listener(server_config).await;
    let dir = std::env::temp_dir().join(format!("worker-tls-{}", env.id));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).expect("write CA");

    env.config.amqp_url = format!("amqps://guest:guest@localhost:{port}/%2f");

    // Without the CA the certificate is not trusted: start-up fails with a clear, redacted error.
    let refused = worker_rabbitmq::Worker::builder()
        .handler(scripted)
        .migrations(TestEnv::migrator())
        .config(env.config.clone())
        .start()
        .await;
    let error = refused
        .expect_err("an untrusted certificate is refused")
        .to_string();
    assert!(
        error.contains("cannot connect to RabbitMQ at amqps://guest:***@localhost:"),
        "{error}"
    );
    assert!(
        !error.contains(":guest@"),
        "the password never appears: {error}"
    );

    env.config.amqp_tls.ca_file = Some(ca_file.clone());
    let worker = worker_rabbitmq::Worker::builder()
        .handler(scripted)
        .migrations(TestEnv::migrator())
        .config(env.config.clone())
        .start()
        .await
        .expect("starts over TLS");
    env.publish_json("Scripted", "evt_tls", json!({})).await;
    eventually("the event is consumed over TLS", || async {
        env.effects("evt_tls").await == 1
    })
    .await;
    worker.shutdown().await.unwrap();
    assert!(
        handshakes.load(Ordering::SeqCst) >= 1,
        "the worker's connection went through the TLS listener"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Mutual TLS: the listener requires a client certificate signed by the test CA, and the worker
/// presents the PKCS#12 identity it is configured with (made here with `openssl pkcs12`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_presents_its_configured_client_certificate() {
    use tokio_rustls::rustls::server::WebPkiClientVerifier;
    use tokio_rustls::rustls::RootCertStore;

    let mut env = TestEnv::new().await;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::CrlSign,
    ];
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key")).expect("CA");
    let server_key = KeyPair::generate().expect("key");
    let server_cert = CertificateParams::new(vec!["localhost".to_owned()])
        .expect("params")
        .signed_by(&server_key, &ca)
        .expect("server cert");
    let client_key = KeyPair::generate().expect("key");
    let client_cert = CertificateParams::new(vec!["worker".to_owned()])
        .expect("params")
        .signed_by(&client_key, &ca)
        .expect("client cert");

    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots.add(ca.der().clone()).expect("CA root");
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
            .build()
            .expect("client verifier");
    let server_config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocols")
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![server_cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
        )
        .expect("server config");
    let (port, handshakes) = tls_listener(server_config).await;

    let dir = std::env::temp_dir().join(format!("worker-mtls-{}", env.id));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write CA");
    std::fs::write(dir.join("client.pem"), client_cert.pem()).expect("write client cert");
    std::fs::write(dir.join("client.key"), client_key.serialize_pem()).expect("write client key");
    let status = std::process::Command::new("openssl")
        .current_dir(&dir)
        .args([
            "pkcs12",
            "-export",
            "-inkey",
            "client.key",
            "-in",
            "client.pem",
            "-certfile",
            "ca.pem",
            "-out",
            "client.p12",
            "-passout",
            "pass:s3cret",
        ])
        .status()
        .expect("openssl");
    assert!(status.success(), "openssl pkcs12 -export");

    env.config.amqp_url = format!("amqps://guest:guest@localhost:{port}/%2f");
    env.config.amqp_tls.ca_file = Some(dir.join("ca.pem"));
    // Without the client identity the listener refuses the handshake.
    let refused = worker_rabbitmq::Worker::builder()
        .handler(scripted)
        .migrations(TestEnv::migrator())
        .config(env.config.clone())
        .start()
        .await;
    assert!(refused.is_err(), "no client certificate, no connection");

    env.config.amqp_tls.client_identity = Some(dir.join("client.p12"));
    env.config.amqp_tls.client_identity_password =
        Some(worker_core::config::Secret("s3cret".into()));
    assert!(
        !format!("{:?}", env.config).contains("s3cret"),
        "the password never shows in Debug output"
    );
    let worker = worker_rabbitmq::Worker::builder()
        .handler(scripted)
        .migrations(TestEnv::migrator())
        .config(env.config.clone())
        .start()
        .await
        .expect("starts with its client certificate");
    env.publish_json("Scripted", "evt_mtls", json!({})).await;
    eventually("the event is consumed over mutual TLS", || async {
        env.effects("evt_mtls").await == 1
    })
    .await;
    worker.shutdown().await.unwrap();
    assert!(handshakes.load(Ordering::SeqCst) >= 1);
    let _ = std::fs::remove_dir_all(&dir);
}
