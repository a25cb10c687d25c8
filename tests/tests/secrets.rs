//! Nothing secret in any output (issue 15): the worker binary and every command, run as
//! processes with passwords in `AMQP_URL` and `DATABASE_URL` (the userinfo's, and a query's
//! `?password=`), `RUST_LOG=trace`, text and JSON logs, against reachable, refusing, silent and
//! malformed services and with a wrong password, print none of the passwords; neither does the
//! `Debug` of the settings and builders.
//!
//! The broker password belongs to a RabbitMQ user of the test's own (guest's password cannot
//! change on a shared broker), deleted at the end; PostgreSQL trusts local connections, so any
//! password connects.

use std::process::Stdio;

use rand::Rng;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use worker_rabbitmq::{Relay, Settings, Worker};
use worker_tests::{closed_port, eventually, silent_listener, stop_gracefully, TestEnv, PATIENCE};

/// A password no output may show: a prefix and random hex digits.
fn password(prefix: &str) -> String {
    format!("{prefix}{:016x}", rand::thread_rng().gen::<u64>())
}

/// A RabbitMQ user with a password only this test knows, allowed everything on vhost `/`;
/// deleted when dropped.
struct BrokerUser {
    name: String,
    password: String,
}

impl BrokerUser {
    fn create(env: &TestEnv) -> Self {
        let user = Self {
            name: format!("{}_secrets", env.id),
            password: password("AmqpPw"),
        };
        rabbitmqctl(&["add_user", &user.name, &user.password]);
        rabbitmqctl(&["set_permissions", "-p", "/", &user.name, ".*", ".*", ".*"]);
        user
    }

    /// The broker URL logging in as this user with `password`.
    fn url(&self, password: &str) -> String {
        format!("amqp://{}:{password}@127.0.0.1:5672/%2f", self.name)
    }

    /// Open broker connections of this user.
    fn connections(&self) -> usize {
        let output = std::process::Command::new("rabbitmqctl")
            .args(["list_connections", "-q", "--no-table-headers", "user"])
            .output()
            .expect("rabbitmqctl");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|line| line.trim() == self.name)
            .count()
    }
}

impl Drop for BrokerUser {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["delete_user", &self.name])
            .output();
    }
}

fn rabbitmqctl(args: &[&str]) {
    let output = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl runs");
    assert!(
        output.status.success(),
        "rabbitmqctl {}: {}",
        args[0],
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A database URL for the local server with `password` in its userinfo.
fn database_with_password(password: &str) -> String {
    format!("postgres://postgres:{password}@127.0.0.1:5432/postgres")
}

/// A database URL for the local server with `password` as a query parameter.
fn database_with_query_password(password: &str) -> String {
    format!("postgres://postgres@127.0.0.1:5432/postgres?password={password}")
}

/// What a process printed and how it ended.
#[derive(Debug)]
struct Ran {
    what: String,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// A running `cli_worker` process whose output is read as it comes (trace logs would fill a
/// pipe otherwise).
struct Process {
    what: String,
    child: Child,
    stdout: JoinHandle<String>,
    stderr: JoinHandle<String>,
}

fn read_all(mut pipe: impl tokio::io::AsyncRead + Unpin + Send + 'static) -> JoinHandle<String> {
    tokio::spawn(async move {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes).await;
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

impl Process {
    fn start(vars: &[(&str, String)], args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cli_worker"))
            .args(args)
            .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn cli_worker");
        let stdout = read_all(child.stdout.take().expect("stdout"));
        let stderr = read_all(child.stderr.take().expect("stderr"));
        let log = vars
            .iter()
            .find(|(k, _)| *k == "WORKER_LOG_FORMAT")
            .map_or("text", |(_, v)| v.as_str());
        Self {
            what: format!("`{}` ({log} logs)", args.join(" ")),
            child,
            stdout,
            stderr,
        }
    }

    /// Waits for the process to end on its own.
    async fn finish(mut self) -> Ran {
        let status = tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not end within {PATIENCE:?}", self.what))
            .expect("wait");
        self.collect(status.code()).await
    }

    /// Stops the process as a supervisor would (SIGTERM), then waits for it.
    async fn stop(mut self) -> Ran {
        stop_gracefully(&mut self.child).await;
        let code = self.child.try_wait().expect("wait").and_then(|s| s.code());
        self.collect(code).await
    }

    async fn collect(self, code: Option<i32>) -> Ran {
        Ran {
            what: self.what,
            code,
            stdout: self.stdout.await.expect("stdout read"),
            stderr: self.stderr.await.expect("stderr read"),
        }
    }
}

/// Runs one command to its end and checks its exit code and that no secret is in its output.
async fn check(vars: &[(&str, String)], args: &[&str], code: i32, secrets: &[&str]) -> Ran {
    let ran = Process::start(vars, args).finish().await;
    assert_clean(&ran, code, secrets);
    ran
}

/// `ran` ended with `code` and its output holds none of `secrets`.
fn assert_clean(ran: &Ran, code: i32, secrets: &[&str]) {
    assert_eq!(ran.code, Some(code), "{} exit code: {ran:#?}", ran.what);
    for secret in secrets {
        for (stream, text) in [("stdout", &ran.stdout), ("stderr", &ran.stderr)] {
            if let Some(at) = text.find(secret) {
                let line = text[..at].rfind('\n').map_or(0, |n| n + 1);
                let end = text[at..].find('\n').map_or(text.len(), |n| at + n);
                panic!(
                    "{}: a password is on {stream}: {}",
                    ran.what,
                    &text[line..end]
                );
            }
        }
    }
}

/// The variables of a process in `env`'s namespace with these URLs, trace logs and `format`.
fn vars(env: &TestEnv, amqp: &str, database: &str, format: &str) -> Vec<(&'static str, String)> {
    let mut vars: Vec<(&'static str, String)> = env
        .worker_env()
        .into_iter()
        .filter(|(k, _)| !matches!(*k, "AMQP_URL" | "DATABASE_URL"))
        .collect();
    vars.extend([
        ("AMQP_URL", amqp.to_owned()),
        ("DATABASE_URL", database.to_owned()),
        ("RUST_LOG", "trace".to_owned()),
        ("WORKER_LOG_FORMAT", format.to_owned()),
    ]);
    vars
}

/// `vars` with the dead-letter store on.
fn with_store(mut vars: Vec<(&'static str, String)>) -> Vec<(&'static str, String)> {
    vars.retain(|(k, _)| *k != "WORKER_DLQ_STORE");
    vars.push(("WORKER_DLQ_STORE", "on".to_owned()));
    vars
}

/// Every command's `--help`.
const HELP: &[&[&str]] = &[
    &["--help"],
    &["help"],
    &["run", "--help"],
    &["handlers", "--help"],
    &["topology", "--help"],
    &["dlq", "--help"],
    &["dlq", "list", "--help"],
    &["dlq", "show", "--help"],
    &["dlq", "stats", "--help"],
    &["dlq", "replay", "--help"],
    &["dlq", "purge", "--help"],
    &["dlq", "ingest", "--help"],
    &["demo", "--help"],
    &["publish", "--help"],
    &["outbox", "--help"],
    &["outbox", "relay", "--help"],
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reachable_services_print_no_password() {
    let env = TestEnv::new().await;
    let user = BrokerUser::create(&env);
    let (db_password, query_password) = (password("PgPw"), password("PgQueryPw"));
    let secrets = [
        user.password.as_str(),
        db_password.as_str(),
        query_password.as_str(),
    ];
    let amqp = user.url(&user.password);
    let by_userinfo = database_with_password(&db_password);
    let by_query = database_with_query_password(&query_password);
    let text_logs = vars(&env, &amqp, &by_userinfo, "text");
    let json_logs = vars(&env, &amqp, &by_query, "json");
    let queue = env.queue("scripted");

    // The worker, JSON logs: consumes, dead-letters a poison event, stops.
    let worker = Process::start(&json_logs, &["run"]);
    eventually("the worker consumes", || async {
        env.consumers(&queue).await > 0
    })
    .await;
    let published = check(
        &text_logs,
        &[
            "publish",
            "Scripted",
            r#"{"poison": true}"#,
            "--id",
            "evt_secret",
        ],
        0,
        &secrets,
    )
    .await;
    assert!(published.stdout.contains("evt_secret"), "{published:#?}");
    let dlq = format!("{queue}.dlq");
    eventually("the poison event dead-lettered", || async {
        env.depth(&dlq).await >= 1
    })
    .await;
    let ran = worker.stop().await;
    assert_clean(&ran, 0, &secrets);
    // Trace logs, as JSON, with the URLs the worker names redacted.
    assert!(ran.stderr.contains(r#""level":"TRACE""#), "{ran:#?}");
    assert!(ran.stderr.contains("evt_secret"), "{ran:#?}");
    assert!(
        ran.stderr
            .contains(&format!("amqp://{}:***@127.0.0.1:5672/%2f", user.name)),
        "{ran:#?}"
    );
    assert!(ran.stderr.contains("?password=***"), "{ran:#?}");

    // The worker again, text logs, the database password in the userinfo.
    eventually("the first worker gone", || async {
        env.consumers(&queue).await == 0
    })
    .await;
    let worker = Process::start(&text_logs, &["run"]);
    eventually("the worker consumes", || async {
        env.consumers(&queue).await > 0
    })
    .await;
    let ran = worker.stop().await;
    assert_clean(&ran, 0, &secrets);
    assert!(ran.stderr.contains(" TRACE "), "{ran:#?}");
    assert!(
        ran.stderr
            .contains("postgres://postgres:***@127.0.0.1:5432/postgres"),
        "{ran:#?}"
    );

    // The outbox relay on its own, both log formats.
    for vars in [&json_logs, &text_logs] {
        eventually("no connection left", || async { user.connections() == 0 }).await;
        let relay = Process::start(vars, &["outbox", "relay"]);
        eventually("the relay connects", || async { user.connections() > 0 }).await;
        let ran = relay.stop().await;
        assert_clean(&ran, 0, &secrets);
        assert!(ran.stderr.contains("TRACE"), "{ran:#?}");
    }

    // Every command on the queues (the database password in the userinfo) ...
    let queue_mode: &[(&[&str], i32)] = &[
        (&["handlers"], 0),
        (&["handlers", "--json"], 0),
        (&["topology"], 0),
        (&["topology", "--json"], 0),
        (&["topology", "--declare"], 0),
        (&["dlq", "list"], 0),
        (&["dlq", "list", "--json"], 0),
        (&["dlq", "show", "evt_secret"], 0),
        (&["dlq", "show", "evt_secret", "--json"], 0),
        (&["dlq", "show", "evt_none"], 3),
        (&["dlq", "stats"], 0),
        (&["dlq", "stats", "--json"], 0),
        (&["dlq", "replay", "evt_secret", "--dry-run"], 0),
        (&["dlq", "purge", "evt_secret"], 0),
        (
            &["publish", "Scripted", "{}", "--id", "evt_fine", "--json"],
            0,
        ),
        (&["publish", "NobodyListens", "{}"], 3),
        (&["demo"], 2),
        (&["dlq", "frobnicate"], 2),
        (&["dlq", "list", "--since", "soon"], 2),
        (&["run", "--bogus"], 2),
    ];
    for (args, code) in queue_mode {
        check(&text_logs, args, *code, &secrets).await;
    }
    for args in HELP {
        let ran = check(&text_logs, args, 0, &secrets).await;
        assert!(ran.stdout.contains("Usage"), "{ran:#?}");
    }
    // ... and on the dead-letter store (the database password in the query, JSON logs).
    let store = with_store(json_logs.clone());
    let store_mode: &[(&[&str], i32)] = &[
        (&["dlq", "ingest", "--until-empty"], 0),
        (&["dlq", "list"], 0),
        (&["dlq", "list", "--json"], 0),
        (&["dlq", "show", "evt_secret"], 0),
        (&["dlq", "stats", "--json"], 0),
        (&["dlq", "replay", "evt_secret"], 0),
        (&["dlq", "purge", "--all", "--yes"], 3),
    ];
    for (args, code) in store_mode {
        check(&store, args, *code, &secrets).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_services_and_a_wrong_password_print_no_password() {
    let env = TestEnv::new().await;
    let user = BrokerUser::create(&env);
    let (db_password, wrong_password) = (password("PgPw"), password("WrongPw"));
    let secrets = [
        user.password.as_str(),
        db_password.as_str(),
        wrong_password.as_str(),
    ];
    let refused_amqp = format!(
        "amqp://{}:{}@127.0.0.1:{}/%2f",
        user.name,
        user.password,
        closed_port()
    );
    let refused_db = format!(
        "postgres://postgres:{db_password}@127.0.0.1:{}/postgres",
        closed_port()
    );
    let (silent_port, _silent) = silent_listener().await;
    let silent_amqp = format!(
        "amqp://{}:{}@127.0.0.1:{silent_port}/%2f",
        user.name, user.password
    );
    let silent_db = database_with_query_password(&db_password)
        .replace("127.0.0.1:5432", &format!("127.0.0.1:{silent_port}"));
    let reachable_amqp = user.url(&user.password);

    let broker_commands: &[&[&str]] = &[
        &["run"],
        &["outbox", "relay"],
        &["topology", "--declare"],
        &["dlq", "list"],
        &["dlq", "show", "evt_x"],
        &["dlq", "stats"],
        &["dlq", "replay", "--all"],
        &["dlq", "purge", "--all", "--yes"],
        &["dlq", "ingest"],
        &["publish", "Scripted", "{}"],
    ];
    for format in ["text", "json"] {
        // Both refused.
        let both = vars(&env, &refused_amqp, &refused_db, format);
        for args in broker_commands {
            let ran = check(&both, args, 4, &secrets).await;
            assert!(ran.stderr.contains(":***@127.0.0.1:"), "{ran:#?}");
        }
        check(&both, &["handlers"], 0, &secrets).await;
        // The broker answers, the database refuses.
        let database = vars(&env, &reachable_amqp, &refused_db, format);
        for args in [
            &["run"][..],
            &["outbox", "relay"],
            &["dlq", "ingest", "--until-empty"],
        ] {
            let ran = check(&database, args, 4, &secrets).await;
            assert!(ran.stderr.contains("postgres://postgres:***@"), "{ran:#?}");
        }
        check(&with_store(database), &["dlq", "list"], 4, &secrets).await;
    }
    // Nothing answers.
    let silent = vars(&env, &silent_amqp, &silent_db, "json");
    for args in [&["run"][..], &["dlq", "list"], &["outbox", "relay"]] {
        let ran = check(&silent, args, 4, &secrets).await;
        assert!(ran.stderr.contains("did not answer"), "{ran:#?}");
    }
    let silent_db_only = vars(&env, &reachable_amqp, &silent_db, "text");
    let ran = check(&with_store(silent_db_only), &["dlq", "list"], 4, &secrets).await;
    assert!(ran.stderr.contains("?password=***"), "{ran:#?}");
    // The broker refuses the password.
    let refused_login = vars(
        &env,
        &user.url(&wrong_password),
        &database_with_password(&db_password),
        "json",
    );
    for args in [&["run"][..], &["dlq", "list"], &["outbox", "relay"]] {
        let ran = check(&refused_login, args, 4, &secrets).await;
        assert!(ran.stderr.contains("ACCESS_REFUSED"), "{ran:#?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_urls_print_no_password() {
    let env = TestEnv::new().await;
    let (amqp_password, db_password, query_password) =
        (password("AmqpPw"), password("PgPw"), password("PgQueryPw"));
    let secrets = [
        amqp_password.as_str(),
        db_password.as_str(),
        query_password.as_str(),
    ];
    let good_amqp = worker_tests::amqp_url();
    let good_db = worker_tests::database_url();
    // A malformed AMQP_URL: every command that reads the settings stops with exit 2.
    for amqp in [
        format!("amqp://guest:{amqp_password}@127.0.0.1:notaport/%2f"),
        // Generated passwords hold `#` and `?`, which a URL must percent-encode.
        format!("amqp://guest:x#{amqp_password}@127.0.0.1:5672/%2f"),
        format!("amqps://guest:x?{amqp_password}@127.0.0.1:5671/%2f"),
    ] {
        let vars = vars(&env, &amqp, &good_db, "json");
        for args in [
            &["run"][..],
            &["handlers"],
            &["dlq", "list"],
            &["outbox", "relay"],
        ] {
            let ran = check(&vars, args, 2, &secrets).await;
            assert!(ran.stderr.contains("AMQP_URL"), "{ran:#?}");
        }
    }
    // A malformed DATABASE_URL: the commands that use the database stop with exit 2.
    for database in [
        format!("postgres://postgres:{db_password}@127.0.0.1:notaport/postgres"),
        format!("postgres://postgres:x#{db_password}@127.0.0.1:5432/postgres"),
        format!(
            "postgres://postgres:{db_password}@127.0.0.1:5432/postgres?sslmode=bogus&password={query_password}"
        ),
    ] {
        let vars = vars(&env, &good_amqp, &database, "text");
        for args in [&["run"][..], &["outbox", "relay"], &["dlq", "ingest"]] {
            let ran = check(&vars, args, 2, &secrets).await;
            assert!(ran.stderr.contains("DATABASE_URL"), "{ran:#?}");
        }
        check(&with_store(vars), &["dlq", "list"], 2, &secrets).await;
    }
}

#[test]
fn debug_of_settings_and_builders_masks_passwords() {
    let secrets = ["AmqpPw1", "PgPw2", "PgQueryPw3", "P12Pw4"];
    let settings = Settings::from_vars([
        (
            "AMQP_URL",
            "amqps://app:AmqpPw1@broker:5671/%2f?heartbeat=5",
        ),
        (
            "DATABASE_URL",
            "postgres://app:PgPw2@db/orders?sslmode=require&password=PgQueryPw3",
        ),
        ("WORKER_AMQP_CLIENT_IDENTITY", "client.p12"),
        ("WORKER_AMQP_CLIENT_IDENTITY_PASSWORD", "P12Pw4"),
    ])
    .expect("settings");
    let relay = Relay::builder(settings.worker.clone(), settings.broker.clone());
    let worker = Worker::builder().settings(settings.clone());
    let printed = [
        format!("{settings:?}"),
        format!("{settings:#?}"),
        format!("{:?}", settings.worker),
        format!("{:?}", settings.broker),
        format!("{worker:?}"),
        format!("{relay:?}"),
    ];
    for text in &printed {
        for secret in secrets {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(text.contains("***"), "{text}");
    }
    assert!(
        printed[0].contains(r#""amqps://app:***@broker:5671/%2f?heartbeat=5""#),
        "{}",
        printed[0]
    );
    assert!(
        printed[0].contains(r#""postgres://app:***@db/orders?sslmode=require&password=***""#),
        "{}",
        printed[0]
    );
    // A URL that does not parse is refused without showing its password, in both forms.
    let error = Settings::from_vars([("AMQP_URL", "amqp://app:AmqpPw1@broker:port/%2f")])
        .expect_err("not a URL");
    for text in [error.to_string(), format!("{error:?}")] {
        assert!(!text.contains("AmqpPw1"), "{text}");
        assert!(text.contains("amqp://app:***@broker:port/%2f"), "{text}");
    }
}

/// Not a test of the product: the check above finds a password when one is printed.
#[test]
fn the_check_finds_a_printed_password() {
    let ran = Ran {
        what: "echo".into(),
        code: Some(0),
        stdout: "connecting to amqp://u:AmqpPw5@h\n".into(),
        stderr: String::new(),
    };
    let found = std::panic::catch_unwind(|| assert_clean(&ran, 0, &["AmqpPw5"]));
    assert!(found.is_err());
}
