//! The README's "Your first worker", followed as a new user would: the crate is written from the
//! README's own code blocks into a temporary directory outside this workspace (next to a `worker`
//! link to this repository, as the guide has it), built with cargo, run with its defaults, and
//! the guide's step-3 commands are run against it; their output must be what the README shows
//! (trace ids, "Ns ago" and column padding aside).
//!
//! The first build compiles every dependency in `target/getting-started` (a few minutes), later
//! ones only the crate. The guide's names are the defaults of a binary called `billing-worker`
//! (schema `billing_worker`, queues `billing-worker.*`): the test removes them before and after.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::Command;
use worker_tests::{eventually, remove_namespace, TestEnv};

const README: &str = include_str!("../../README.md");
const SECTION: &str = "## Your first worker";
const CRATE: &str = "billing-worker";

/// The guide's section of the README.
fn section() -> &'static str {
    let start = README
        .find(SECTION)
        .expect("README has \"Your first worker\"");
    let rest = &README[start + SECTION.len()..];
    let end = rest.find("\n## ").unwrap_or(rest.len());
    &rest[..end]
}

/// The fenced blocks of `text` as (the line before the block's paragraph, info string, body):
/// every file of the crate is announced by a bold `` **`billing-worker/<path>`** `` line.
fn files(text: &str) -> Vec<(String, String)> {
    let mut files = Vec::new();
    let mut announced: Option<String> = None;
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if let Some(rest) = line.strip_prefix(&format!("**`{CRATE}/")) {
            let path = rest.split('`').next().expect("a path");
            announced = Some(path.to_owned());
        } else if line.starts_with("```") {
            let body: Vec<&str> = lines
                .by_ref()
                .take_while(|l| !l.starts_with("```"))
                .collect();
            if let Some(path) = announced.take() {
                files.push((path, body.join("\n") + "\n"));
            }
        }
    }
    files
}

/// The `$ command` lines of the guide's step-3 transcript, each with the output shown under it.
fn transcript(text: &str) -> Vec<(String, Vec<String>)> {
    let block = text
        .split("```text\n")
        .find(|block| block.starts_with("$ cargo run -q -- publish"))
        .expect("the guide's step 3 transcript");
    let block = &block[..block.find("```").expect("closed block")];
    let mut steps: Vec<(String, Vec<String>)> = Vec::new();
    for line in block.lines() {
        match line.strip_prefix("$ ") {
            Some(command) => steps.push((command.to_owned(), Vec::new())),
            None => steps
                .last_mut()
                .expect("output after a command")
                .1
                .push(line.into()),
        }
    }
    steps
}

/// One line with what differs from run to run masked: trace ids, ages, padding.
fn normalized(line: &str, exchange: &str) -> String {
    let line = line.replace(&format!("`{exchange}`"), "`events`");
    let words: Vec<String> = line
        .split_whitespace()
        .map(|word| {
            let hex = word.trim_matches(|c: char| !c.is_ascii_alphanumeric());
            if hex.len() == 32 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
                word.replace(hex, "<trace>")
            } else if word.ends_with('s') && word[..word.len() - 1].parse::<u32>().is_ok() {
                "<age>".to_owned()
            } else {
                word.to_owned()
            }
        })
        .collect();
    words.join(" ")
}

/// Removes the guide's schema and queues, before the test and after it (also when it panics).
struct GuideNames;

impl GuideNames {
    fn clean() {
        remove_namespace(&format!("{CRATE}."), &[], &["billing_worker"]);
    }
}

impl Drop for GuideNames {
    fn drop(&mut self) {
        GuideNames::clean();
    }
}

/// A fresh directory under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is in the repository")
        .to_owned()
}

/// Writes the crate as the guide says, next to a `worker` link to this repository.
fn write_crate(dir: &Path) -> PathBuf {
    std::os::unix::fs::symlink(repository(), dir.join("worker")).expect("link the clone");
    let root = dir.join(CRATE);
    let files = files(section());
    let names: Vec<&str> = files.iter().map(|(path, _)| path.as_str()).collect();
    assert_eq!(
        names,
        [
            "Cargo.toml",
            "src/main.rs",
            "migrations/20261201000000_refunds.sql"
        ],
        "the files the guide shows"
    );
    for (path, body) in &files {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().expect("a directory")).expect("mkdir");
        std::fs::write(path, body).expect("write a file of the crate");
    }
    // `cp ../worker/Cargo.lock .`, as the guide says.
    std::fs::copy(dir.join("worker/Cargo.lock"), root.join("Cargo.lock")).expect("copy Cargo.lock");
    root
}

async fn build(root: &Path, target: &Path) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args(["build", "--quiet"])
        .current_dir(root)
        .env("CARGO_TARGET_DIR", target)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(30 * 60), output)
        .await
        .expect("the guide's crate builds within 30 minutes")
        .expect("cargo runs");
    assert!(
        output.status.success(),
        "the guide's crate does not build:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    target.join("debug").join(CRATE)
}

#[tokio::test]
async fn the_readme_s_first_worker_builds_runs_and_behaves_as_shown() {
    GuideNames::clean();
    let _names = GuideNames;
    let env = TestEnv::new().await;
    // One fixed path, so that a second run rebuilds nothing (cargo keys path dependencies by
    // their path).
    let dir = TempDir(std::env::temp_dir().join("worker-guide"));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).expect("temporary directory");
    let root = write_crate(&dir.0);
    let binary = build(&root, &repository().join("target/getting-started")).await;

    // Step 2: `cargo run`, with its defaults: only the exchange (this test's own) and the metrics
    // port (a free one, as for any second worker on a host) are set.
    let vars = [
        ("AMQP_URL", env.broker.url.clone()),
        ("DATABASE_URL", env.config.database_url.clone()),
        ("WORKER_EXCHANGE", env.broker.exchange.clone()),
        ("WORKER_METRICS_ADDR", "127.0.0.1:0".into()),
    ];
    let mut worker = Command::new(&binary)
        .current_dir(&root)
        .envs(vars.iter().cloned())
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the guide's worker");
    eventually(
        "the guide's worker consumes billing-worker.refund",
        || async { env.consumers("billing-worker.refund").await == 1 },
    )
    .await;

    // Step 3, command by command.
    let program = format!("'{}'", binary.display());
    for (command, shown) in transcript(section()) {
        if !command.contains(" publish ") {
            // The default keeps dead letters in the store: the worker moves the record out of
            // the dead-letter queue into `dead_letters`.
            let pool = &env.pool;
            let count = |table: &'static str| async move {
                sqlx::query_scalar::<_, i64>(&format!(
                    "SELECT count(*) FROM billing_worker.{table}"
                ))
                .fetch_one(pool)
                .await
                .ok()
            };
            eventually("the events are processed and dead-lettered", || async {
                count("refunds").await == Some(1)
                    && count("dead_letters").await == Some(1)
                    && env.depth("billing-worker.refund.dlq").await == 0
            })
            .await;
        }
        let line = command.replacen("cargo run -q --", &program, 1);
        let output = Command::new("sh")
            .args(["-c", &line])
            .current_dir(&root)
            .envs(vars.iter().cloned())
            .output()
            .await
            .expect("run a step of the guide");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "`{command}` failed: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let got: Vec<String> = stdout
            .lines()
            .map(|l| normalized(l, &env.broker.exchange))
            .collect();
        let want: Vec<String> = shown
            .iter()
            .map(|l| normalized(l, &env.broker.exchange))
            .collect();
        assert_eq!(got, want, "the output of `{command}`");
    }

    // Ctrl-C: a graceful stop, and a log with no ERROR but the dead letter's and no notices.
    let pid = worker.id().expect("running").to_string();
    let status = Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .await
        .expect("kill");
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(60), worker.wait())
        .await
        .expect("the worker stops after SIGINT")
        .expect("wait");
    let mut log = String::new();
    let mut stdout = String::new();
    worker
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut log)
        .await
        .expect("read the log");
    worker
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut stdout)
        .await
        .expect("read stdout");
    log.push_str(&stdout);
    assert!(exit.success(), "exit {exit:?}\n{log}");
    assert!(log.contains("worker stopped"), "{log}");
    for line in log.lines() {
        assert!(
            !line.contains("ERROR") || line.contains("dead-lettering the event"),
            "an ERROR line in a healthy run: {line}"
        );
        assert!(
            !line.contains("NOTICE") && !line.contains("already exists, skipping"),
            "a database notice in the log: {line}"
        );
    }
}
