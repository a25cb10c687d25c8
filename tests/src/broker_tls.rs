//! RabbitMQ's own TLS listener, started at runtime on a free port for one test and stopped when
//! the test ends, so the worker's `amqps://` code is tested against the broker's TLS stack
//! (Erlang `ssl`) without a broker restart, which the tests running in parallel would not survive.
//!
//! The listener is started with `rabbitmqctl eval 'rabbit_networking:start_ssl_listener(..)'`
//! (RabbitMQ 3.10) with certificate files the test writes to a world-readable directory of its
//! own (the broker runs as another user), and stopped with `rabbit_networking:stop_tcp_listener`.
//! Any refusal fails the test with the broker's answer: nothing here skips.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// The password of the client identity's PKCS#12 file.
pub const CLIENT_IDENTITY_PASSWORD: &str = "s3cret";

/// A CA, a server certificate for `localhost` and a client certificate signed by it, written to
/// a directory of the test's own (removed on drop).
#[derive(Debug)]
pub struct TestPki {
    /// The directory holding the files.
    pub dir: PathBuf,
}

impl TestPki {
    /// Generates the certificates and writes `ca.pem`, `server.pem`, `server.key`,
    /// `client.pem`, `client.key` and `client.p12` (PKCS#12, made with `openssl pkcs12`, password
    /// [`CLIENT_IDENTITY_PASSWORD`]) under the temp directory, readable by every user.
    pub fn generate(test_id: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("worker-broker-tls-{test_id}"));
        std::fs::create_dir_all(&dir).expect("create the certificate directory");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
            .expect("make the certificate directory readable for the broker");

        // Distinct subject names: a leaf whose subject equals its issuer's looks self-signed, and
        // Erlang's path validation rejects it ("Bad Certificate").
        let params = |common_name: &str, dns_names: &[&str]| {
            let names = dns_names
                .iter()
                .map(|n| (*n).to_owned())
                .collect::<Vec<_>>();
            let mut params = CertificateParams::new(names).expect("certificate parameters");
            let mut subject = DistinguishedName::new();
            subject.push(DnType::CommonName, common_name);
            params.distinguished_name = subject;
            params
        };
        let mut ca_params = params("worker-tests CA", &[]);
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::CrlSign,
        ];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key"))
            .expect("CA certificate");
        let server_key = KeyPair::generate().expect("key");
        let server_cert = params("localhost", &["localhost"])
            .signed_by(&server_key, &ca)
            .expect("server certificate");
        let client_key = KeyPair::generate().expect("key");
        let client_cert = params("worker", &["worker"])
            .signed_by(&client_key, &ca)
            .expect("client certificate");

        let pki = Self { dir };
        pki.write("ca.pem", &ca.pem());
        pki.write("server.pem", &server_cert.pem());
        pki.write("server.key", &server_key.serialize_pem());
        pki.write("client.pem", &client_cert.pem());
        pki.write("client.key", &client_key.serialize_pem());
        let output = std::process::Command::new("openssl")
            .current_dir(&pki.dir)
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
            ])
            .arg(format!("pass:{CLIENT_IDENTITY_PASSWORD}"))
            .output()
            .expect("run openssl (needed to make the PKCS#12 client identity)");
        assert!(
            output.status.success(),
            "openssl pkcs12 -export failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        pki
    }

    /// The path of one of the files.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn write(&self, name: &str, contents: &str) {
        let path = self.path(name);
        std::fs::write(&path, contents).expect("write a certificate file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
            .expect("make a certificate file readable for the broker");
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether the broker asks for and requires a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Server authentication only (`verify_none`).
    None,
    /// Mutual TLS: `verify_peer` and `fail_if_no_peer_cert`, against the test CA.
    Required,
}

/// A TLS listener of the shared broker on `127.0.0.1:<port>`, stopped on drop.
#[derive(Debug)]
pub struct BrokerTlsListener {
    /// The listener's port.
    pub port: u16,
}

impl BrokerTlsListener {
    /// Starts a listener with `pki`'s server certificate on a free port. Panics with the
    /// broker's answer when it refuses.
    pub fn start(pki: &TestPki, client_auth: ClientAuth) -> Self {
        stop_orphaned_listeners();
        let files =
            ["ca.pem", "server.pem", "server.key"].map(|name| erlang_string(&pki.path(name)));
        for file in &files {
            // The broker runs as its own user: make sure it can read what the test wrote.
            let answer = eval(&format!(
                "case file:read_file({file}) of {{ok, _}} -> readable; Error -> Error end."
            ));
            assert_eq!(
                answer,
                "readable",
                "the RabbitMQ node cannot read {file}: {answer} (it runs as `{}`; the test \
                 directory must be visible to it, e.g. not hidden by a private /tmp)",
                broker_user()
            );
        }
        let [ca, cert, key] = files;
        let verify = match client_auth {
            ClientAuth::None => "{verify, verify_none}".to_owned(),
            ClientAuth::Required => {
                "{verify, verify_peer}, {fail_if_no_peer_cert, true}".to_owned()
            }
        };
        let mut last = String::new();
        // The port is free when chosen; another process may take it before the broker binds it,
        // so a few tries.
        for _ in 0..5 {
            let port = free_port();
            last = eval(&format!(
                "rabbit_networking:start_ssl_listener({{\"127.0.0.1\", {port}}}, \
                 [{{cacertfile, {ca}}}, {{certfile, {cert}}}, {{keyfile, {key}}}, {verify}], 1)."
            ));
            if last == "ok" {
                return Self { port };
            }
            if !last.contains("eaddrinuse") {
                break;
            }
        }
        panic!(
            "RabbitMQ refused to start a TLS listener at runtime \
             (rabbit_networking:start_ssl_listener): {last}"
        );
    }
}

impl Drop for BrokerTlsListener {
    fn drop(&mut self) {
        let answer = eval(&format!(
            "rabbit_networking:stop_tcp_listener({{\"127.0.0.1\", {}}}).",
            self.port
        ));
        if answer != "ok" {
            eprintln!(
                "stopping the broker's TLS listener on port {} answered: {answer}",
                self.port
            );
        }
    }
}

/// Stops the listeners of test processes that died before they could stop theirs (SIGKILL):
/// those whose certificate file, in a directory of this module, no longer exists. A live test's
/// files exist for as long as its listener runs (the listener is dropped first).
fn stop_orphaned_listeners() {
    let answer = eval(
        "[rabbit_networking:stop_tcp_listener({inet:ntoa(Ip), Port}) \
         || {listener, _, 'amqp/ssl', _, Ip, Port, Opts} <- rabbit_networking:active_listeners(), \
            {certfile, File} <- Opts, \
            string:find(File, \"/worker-broker-tls-\") =/= nomatch, \
            not filelib:is_regular(File)].",
    );
    if !answer.starts_with('[') {
        eprintln!("looking for orphaned TLS listeners on the broker failed: {answer}");
    }
}

/// Runs `expression` on the broker node; its answer, trimmed (or what went wrong).
fn eval(expression: &str) -> String {
    match std::process::Command::new("rabbitmqctl")
        .args(["eval", expression])
        .output()
    {
        Ok(output) => {
            let answer = String::from_utf8_lossy(&output.stdout).trim().to_owned();
            if output.status.success() {
                answer
            } else {
                format!(
                    "rabbitmqctl eval failed ({}): {answer} {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr).trim()
                )
            }
        }
        Err(error) => format!("cannot run rabbitmqctl: {error}"),
    }
}

/// A path as an Erlang string literal.
fn erlang_string(path: &Path) -> String {
    let path = path.to_str().expect("the temp directory path is UTF-8");
    assert!(
        !path.contains(['"', '\\']),
        "the temp directory path {path:?} needs no escaping"
    );
    format!("\"{path}\"")
}

/// A local port nobody listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// The user the broker runs as, for error messages.
fn broker_user() -> String {
    std::process::Command::new("ps")
        .args(["-o", "user=", "-C", "beam.smp"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|_| "?".into())
}
