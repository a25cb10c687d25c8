//! The parent process: creates the namespace, publishes each scenario's events, runs the
//! scenario's consumer in a child process, checks the effects, prints the table, cleans up.
//! Scenario h (in memory) publishes its own events in its child and needs no namespace.

use std::process::{ExitCode, Stdio};
use std::time::Duration;

use lapin::Connection;
use sqlx::PgPool;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use crate::cli::{Args, Scenario};
use crate::namespace::{connect, spec, Namespace};
use crate::publish::EventPublisher;
use crate::recorder::RunReport;
use crate::scenario::in_memory::TARGET_PER_SECOND;
use crate::scenario::{READY, RESULT};
use crate::BoxError;

/// How long a child may take to connect and start consuming.
const STARTUP: Duration = Duration::from_secs(60);

/// One line of the table.
#[derive(Debug)]
pub struct Row {
    /// Which consumer.
    pub scenario: Scenario,
    /// Its figures.
    pub report: RunReport,
    /// `Err` with every failed check.
    pub check: Result<(), String>,
}

/// Runs the benchmark; exit code 0 when every check passed, 1 when one failed, 2 when the
/// benchmark itself could not run.
pub async fn run(args: Args) -> ExitCode {
    let namespace = args
        .scenarios
        .iter()
        .any(|s| s.uses_broker())
        .then(|| Namespace::fresh(&args));
    if let Some(namespace) = &namespace {
        if let Err(error) = namespace.create().await {
            eprintln!("setting up namespace {} failed: {error}", namespace.id);
            let _ = namespace.destroy().await;
            return ExitCode::from(2);
        }
        eprintln!(
            "namespace {}: {} events + {} duplicates per scenario, {} in flight, {}",
            namespace.id,
            args.messages,
            args.duplicate_count(),
            args.in_flight,
            match args.rate {
                Some(rate) => format!("published at {rate} msg/s while consuming"),
                None => "published as a backlog before consuming".into(),
            }
        );
    }
    let result = run_scenarios(&args, namespace.as_ref()).await;
    if let Some(namespace) = &namespace {
        if let Err(error) = namespace.destroy().await {
            eprintln!("cleaning up namespace {} failed: {error}", namespace.id);
        }
    }
    match result {
        Ok(rows) => {
            print_table(&args, &rows);
            if rows.iter().all(|r| r.check.is_ok()) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(error) => {
            eprintln!("benchmark failed: {error}");
            ExitCode::from(2)
        }
    }
}

async fn run_scenarios(args: &Args, namespace: Option<&Namespace>) -> Result<Vec<Row>, BoxError> {
    let broker = match namespace {
        Some(namespace) => Some((
            namespace,
            connect(&namespace.broker.url, "worker-bench-publisher").await?,
            namespace.pool(2).await?,
        )),
        None => None,
    };
    let mut scenarios = args.scenarios.clone();
    scenarios.dedup();
    let mut rows = Vec::new();
    for scenario in scenarios {
        if !scenario.uses_broker() {
            rows.push(run_in_memory(args, scenario).await?);
            continue;
        }
        let (namespace, connection, pool) = broker.as_ref().ok_or("no namespace")?;
        let publisher = EventPublisher::new(
            connection,
            &namespace.broker.exchange,
            spec(scenario).event_type,
            args.payload_bytes,
        )
        .await?;
        if args.rate.is_none() {
            eprintln!(
                "{}: publishing {} messages",
                scenario.title(),
                args.deliveries()
            );
            publisher
                .backlog(args.messages, args.duplicate_count())
                .await?;
        }
        let mut child = spawn_child(args, scenario, Some(&namespace.id))?;
        let stdout = child.stdout.take().ok_or("child without stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        tokio::time::timeout(STARTUP, wait_for_line(&mut lines, READY))
            .await
            .map_err(|_| format!("{}: the consumer did not start", scenario.title()))??;
        eprintln!("{}: consuming", scenario.title());
        let publishing = args.rate.map(|rate| {
            let (messages, duplicates) = (args.messages, args.duplicate_count());
            tokio::spawn(async move { publisher.at_rate(messages, duplicates, rate).await })
        });
        let result = wait_for_line(&mut lines, RESULT).await;
        let status = child.wait().await?;
        if let Some(publishing) = publishing {
            publishing.await??;
        }
        let report: RunReport = serde_json::from_str(&result?)?;
        let mut check = check(args, namespace, scenario, &report, connection, pool).await;
        if !status.success() {
            check = Err(format!("consumer exited with {status}"));
        }
        rows.push(row(scenario, report, check));
    }
    if let Some((_, connection, pool)) = broker {
        let _ = connection.close(200, "done".into()).await;
        pool.close().await;
    }
    Ok(rows)
}

/// Scenario h: its child publishes into the test harness and delivers; the checks are its
/// counts (every event delivered once and processed) and its exit status.
async fn run_in_memory(args: &Args, scenario: Scenario) -> Result<Row, BoxError> {
    eprintln!(
        "{}: {} messages, in memory",
        scenario.title(),
        args.messages
    );
    let mut child = spawn_child(args, scenario, None)?;
    let stdout = child.stdout.take().ok_or("child without stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let result = wait_for_line(&mut lines, RESULT).await;
    let status = child.wait().await?;
    let report: RunReport = serde_json::from_str(&result?)?;
    let mut check = check_counts(&report);
    if !status.success() {
        check = Err(format!("consumer exited with {status}"));
    }
    Ok(row(scenario, report, check))
}

/// Reports the scenario's figures on stderr and makes its line of the table.
fn row(scenario: Scenario, report: RunReport, check: Result<(), String>) -> Row {
    eprintln!(
        "{}: {:.0} msg/s, p50 {} ms, p99 {} ms, peak RSS {:.1} MiB, {}",
        scenario.title(),
        report.per_second,
        ms(report.p50_ms),
        ms(report.p99_ms),
        report.peak_rss_kb as f64 / 1024.0,
        match &check {
            Ok(()) => "checks passed".to_owned(),
            Err(e) => format!("CHECK FAILED: {e}"),
        }
    );
    Row {
        scenario,
        report,
        check,
    }
}

/// A latency in milliseconds with one decimal, `-` for none (h has no publish-to-done latency).
fn ms(value: f64) -> String {
    if value.is_nan() {
        "-".to_owned()
    } else {
        format!("{value:.1}")
    }
}

/// `value` rounded, with a comma between groups of three digits: `50,000`.
fn grouped(value: f64) -> String {
    let digits = format!("{value:.0}");
    let (sign, digits) = digits.split_at(usize::from(digits.starts_with('-')));
    let mut out = String::from(sign);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

fn spawn_child(
    args: &Args,
    scenario: Scenario,
    namespace: Option<&str>,
) -> Result<Child, BoxError> {
    let child = Command::new(std::env::current_exe()?)
        .args(["--child", scenario.letter()])
        .args(namespace.into_iter().flat_map(|id| ["--namespace", id]))
        .args(["--messages", &args.messages.to_string()])
        .args(["--duplicates", &args.duplicates.to_string()])
        .args(["--in-flight", &args.in_flight.to_string()])
        .args(["--batch-linger-ms", &args.batch_linger_ms.to_string()])
        .args(args.batch_size.map(|size| format!("--batch-size={size}")))
        .args(["--timeout", &args.timeout.to_string()])
        .args(["--payload-bytes", &args.payload_bytes.to_string()])
        .args(["--amqp-url", &args.amqp_url])
        .args(["--database-url", &args.database_url])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    Ok(child)
}

/// Reads the child's stdout up to the line starting with `prefix`; returns the rest of it.
async fn wait_for_line(
    lines: &mut Lines<BufReader<ChildStdout>>,
    prefix: &str,
) -> Result<String, BoxError> {
    while let Some(line) = lines.next_line().await? {
        if let Some(rest) = line.strip_prefix(prefix) {
            return Ok(rest.to_owned());
        }
    }
    Err(format!("the consumer ended without a `{}` line", prefix.trim()).into())
}

/// Every delivery settled and acked, nothing left in the queues, and for c and d exactly one
/// business row and one dedup row per event id.
async fn check(
    args: &Args,
    namespace: &Namespace,
    scenario: Scenario,
    report: &RunReport,
    connection: &Connection,
    pool: &PgPool,
) -> Result<(), String> {
    let mut problems = count_problems(report);
    let names = namespace.names(scenario);
    for queue in [&names.work, &names.dlq] {
        match namespace.depth(connection, queue).await {
            Ok(0) => {}
            Ok(n) => problems.push(format!("{n} messages left in {queue}")),
            Err(error) => problems.push(format!("reading {queue}: {error}")),
        }
    }
    if scenario.writes() {
        let n = args.messages as i64;
        let effects: Result<(i64, i64), _> = sqlx::query_as(
            "SELECT count(*), count(DISTINCT event_id) FROM bench_effects WHERE scenario = $1",
        )
        .bind(scenario.letter())
        .fetch_one(pool)
        .await;
        let claims: Result<i64, _> = match scenario {
            Scenario::C => {
                sqlx::query_scalar(
                    "SELECT count(*) FROM hand_processed_events WHERE handler = 'hand'",
                )
                .fetch_one(pool)
                .await
            }
            _ => {
                sqlx::query_scalar(&format!(
                    "SELECT count(*) FROM \"{}\".processed_events WHERE handler = $1",
                    namespace.id
                ))
                .bind(spec(scenario).name)
                .fetch_one(pool)
                .await
            }
        };
        match effects {
            Ok((rows, distinct)) if rows == n && distinct == n => {}
            Ok((rows, distinct)) => problems.push(format!(
                "{rows} business rows for {distinct} event ids, expected exactly {n} of each"
            )),
            Err(error) => problems.push(format!("counting business rows: {error}")),
        }
        match claims {
            Ok(rows) if rows == n => {}
            Ok(rows) => problems.push(format!("{rows} dedup rows, expected {n}")),
            Err(error) => problems.push(format!("counting dedup rows: {error}")),
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// Every expected delivery done and none failed (all of h's checks).
fn check_counts(report: &RunReport) -> Result<(), String> {
    let problems = count_problems(report);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

fn count_problems(report: &RunReport) -> Vec<String> {
    let mut problems = Vec::new();
    if report.deliveries != report.expected {
        problems.push(format!(
            "{} of {} deliveries done",
            report.deliveries, report.expected
        ));
    }
    if report.failures > 0 {
        problems.push(format!(
            "{} deliveries not processed and acked",
            report.failures
        ));
    }
    problems
}

fn print_table(args: &Args, rows: &[Row]) {
    println!();
    println!(
        "{:<26} {:>10} {:>8} {:>9} {:>9} {:>9} {:>10}  check",
        "scenario", "deliveries", "seconds", "msg/s", "p50 ms", "p99 ms", "peak RSS"
    );
    for row in rows {
        let r = &row.report;
        println!(
            "{:<26} {:>10} {:>8.2} {:>9.0} {:>9} {:>9} {:>6.1} MiB  {}",
            row.scenario.title(),
            r.deliveries,
            r.seconds,
            r.per_second,
            ms(r.p50_ms),
            ms(r.p99_ms),
            r.peak_rss_kb as f64 / 1024.0,
            match &row.check {
                Ok(()) if row.scenario.writes() => "ok, exactly once".to_owned(),
                Ok(()) => "ok".to_owned(),
                Err(e) => format!("FAILED: {e}"),
            }
        );
    }
    let rate = |s: Scenario| {
        rows.iter()
            .find(|r| r.scenario == s)
            .map(|r| r.report.per_second)
    };
    println!();
    if args.rate.is_some() {
        println!("(at a fixed publish rate every scenario keeps up, so the throughput ratios say nothing; compare latency)");
    }
    if let (Some(a), Some(b)) = (rate(Scenario::A), rate(Scenario::B)) {
        println!("b/a = {:.2}  (target >= 1.0)", b / a);
    }
    if let (Some(c), Some(d)) = (rate(Scenario::C), rate(Scenario::D)) {
        println!("d/c = {:.2}  (target >= 4)", d / c);
    }
    if let Some(h) = rate(Scenario::H) {
        println!(
            "h = {} events/s through the test harness, in memory  (target >= {}/s: {})",
            grouped(h),
            grouped(TARGET_PER_SECOND),
            if h >= TARGET_PER_SECOND {
                "met"
            } else {
                "NOT met"
            }
        );
    }
    if !rows.iter().any(|r| r.scenario.uses_broker()) {
        return;
    }
    println!(
        "{} in flight; {}; latency is publish-to-done{}",
        args.in_flight,
        match args.rate {
            Some(rate) => format!("published at {rate} msg/s while consuming"),
            None => "backlog published before consuming".to_owned(),
        },
        if args.rate.is_none() {
            " (includes time waiting in the backlog)"
        } else {
            ""
        }
    );
}
