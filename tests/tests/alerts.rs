//! The alerting rules and the dashboard under `deploy/`: `promtool check rules` and `promtool
//! test rules` pass, the dashboard is valid JSON whose queries are valid PromQL, and both name
//! only metrics the worker exports (a renamed metric would leave an alert that never fires).
//!
//! Needs `promtool` (Debian's `prometheus` package; `.ci/run` installs it).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Every metric the worker exports (`worker-core/src/telemetry/metrics.rs`).
const WORKER_METRICS: &[&str] = &[
    "worker_messages_total",
    "worker_handler_duration_seconds",
    "worker_in_flight_messages",
    "worker_redeliveries_total",
    "worker_queue_messages",
    "worker_message_age_seconds",
    "worker_batch_size",
    "worker_lag_seconds",
    "worker_breaker_state",
    "worker_ready",
    "worker_outbox_pending_events",
];

/// The histograms among them, queried through `_bucket`, `_sum` and `_count`.
const HISTOGRAMS: &[&str] = &[
    "worker_handler_duration_seconds",
    "worker_message_age_seconds",
    "worker_batch_size",
];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is in the repository")
        .to_path_buf()
}

/// Runs `promtool` in the repository root; fails the test, saying what to install, when it is
/// missing.
fn promtool(args: &[&str]) -> Output {
    match Command::new("promtool")
        .args(args)
        .current_dir(repo_root())
        .output()
    {
        Ok(output) => output,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => panic!(
            "promtool is not installed: install Debian's `prometheus` package \
             (`apt-get install -y --no-install-recommends prometheus`; .ci/run does it)"
        ),
        Err(error) => panic!("cannot run promtool: {error}"),
    }
}

fn assert_success(what: &str, output: &Output) {
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_alert_rules_pass_promtool_check() {
    let output = promtool(&["check", "rules", "deploy/prometheus/alerts.yml"]);
    assert_success("promtool check rules deploy/prometheus/alerts.yml", &output);
}

#[test]
fn the_alert_rules_pass_their_unit_tests() {
    let output = promtool(&["test", "rules", "deploy/prometheus/alerts_test.yml"]);
    assert_success(
        "promtool test rules deploy/prometheus/alerts_test.yml",
        &output,
    );
}

#[test]
fn the_alert_rules_name_only_metrics_the_worker_exports() {
    let text = std::fs::read_to_string(repo_root().join("deploy/prometheus/alerts.yml"))
        .expect("read deploy/prometheus/alerts.yml");
    let exprs = rule_exprs(&text);
    let rules = text
        .lines()
        .filter(|l| {
            let l = l.trim_start();
            l.starts_with("- alert:") || l.starts_with("- record:")
        })
        .count();
    assert!(rules > 0, "no rules found");
    assert_eq!(exprs.len(), rules, "one expression per rule: {exprs:#?}");
    let mut named = BTreeSet::new();
    for expr in &exprs {
        for name in metric_names(expr) {
            assert!(
                name == "up" || is_worker_metric(&name),
                "alerts.yml names `{name}`, which the worker does not export, in:\n{expr}"
            );
            named.insert(name);
        }
    }
    assert!(named.contains("up"), "an alert on the target being down");
}

#[test]
fn the_dashboard_is_valid_json_with_valid_queries_of_worker_metrics() {
    let path = repo_root().join("deploy/grafana/dashboard.json");
    let text = std::fs::read_to_string(&path).expect("read deploy/grafana/dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&text).expect("deploy/grafana/dashboard.json is valid JSON");
    assert!(
        dashboard["schemaVersion"].as_u64().unwrap_or(0) >= 36,
        "a current Grafana schema"
    );
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list");
    assert!(
        variables
            .iter()
            .any(|v| v["type"] == "datasource" && v["name"] == "datasource"),
        "a `datasource` variable, so the dashboard imports onto any Prometheus"
    );
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(!panels.is_empty());

    let mut exprs = Vec::new();
    for panel in panels {
        let title = panel["title"].as_str().expect("every panel has a title");
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "panel `{title}` uses the datasource variable"
        );
        let targets = panel["targets"].as_array().expect("panel targets");
        assert!(!targets.is_empty(), "panel `{title}` has a query");
        for target in targets {
            let expr = target["expr"].as_str().expect("a PromQL expr");
            assert!(
                !expr.trim().is_empty(),
                "panel `{title}` has an empty query"
            );
            exprs.push((title.to_owned(), expr.to_owned()));
        }
    }
    let mut named = BTreeSet::new();
    for (title, expr) in &exprs {
        for name in metric_names(expr) {
            assert!(
                is_worker_metric(&name),
                "panel `{title}` names `{name}`, which the worker does not export: {expr}"
            );
            named.insert(base_metric(&name).to_owned());
        }
    }
    for variable in variables.iter().filter(|v| v["type"] == "query") {
        let query = variable["query"].as_str().expect("a variable query");
        let metric = query
            .strip_prefix("label_values(")
            .and_then(|rest| rest.split([',', '{']).next())
            .map(str::trim)
            .expect("label_values(metric, label)");
        assert!(
            is_worker_metric(metric),
            "variable `{}` queries `{metric}`, which the worker does not export",
            variable["name"]
        );
    }
    let missing: Vec<&&str> = WORKER_METRICS
        .iter()
        .filter(|m| !named.contains(**m))
        .collect();
    assert!(missing.is_empty(), "no panel shows {missing:?}");

    // promtool parses every query, as recording rules with Grafana's variables filled in.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, expr)) in exprs.iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "5m")
            .replace("$job", ".*")
            .replace("$handler", ".*");
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::Value::String(expr)
        ));
    }
    let file = std::env::temp_dir().join(format!(
        "worker-dashboard-queries-{}.yml",
        std::process::id()
    ));
    std::fs::write(&file, rules).expect("write the queries");
    let output = promtool(&["check", "rules", file.to_str().expect("a UTF-8 temp path")]);
    let _ = std::fs::remove_file(&file);
    assert_success("promtool check rules (the dashboard's queries)", &output);
}

/// A metric the worker exports, or a histogram's `_bucket`/`_sum`/`_count` series.
fn is_worker_metric(name: &str) -> bool {
    WORKER_METRICS.contains(&base_metric(name))
}

/// `name` without a histogram suffix (when it is one of the histograms).
fn base_metric(name: &str) -> &str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if HISTOGRAMS.contains(&base) {
                return base;
            }
        }
    }
    name
}

/// The `expr:` of every rule in a rules file: a single-line value or a `|`/`>` block.
fn rule_exprs(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut exprs = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let indent = line.len() - line.trim_start().len();
        i += 1;
        let Some(value) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let value = value.trim();
        if value.starts_with('|') || value.starts_with('>') {
            let mut block = Vec::new();
            while i < lines.len() {
                let next = lines[i];
                let next_indent = next.len() - next.trim_start().len();
                if !next.trim().is_empty() && next_indent <= indent {
                    break;
                }
                block.push(next.trim());
                i += 1;
            }
            exprs.push(block.join("\n").trim().to_owned());
        } else {
            let value = value.split(" #").next().unwrap_or(value).trim();
            exprs.push(value.trim_matches(|c| c == '"' || c == '\'').to_owned());
        }
    }
    exprs
}

/// The metric names a PromQL expression selects: identifiers outside label matchers, strings,
/// ranges and grouping clauses that are neither functions, keywords nor numbers (Grafana's
/// `$variables` are skipped).
fn metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "inf",
        "nan",
    ];
    const GROUPING: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    // The index after the string starting at `from` (its quote).
    let skip_string = |from: usize| -> usize {
        let quote = chars[from];
        let mut j = from + 1;
        while j < chars.len() && chars[j] != quote {
            if chars[j] == '\\' {
                j += 1;
            }
            j += 1;
        }
        j + 1
    };
    // The index after the first `close` at or after `from` that is not inside a string.
    let skip_to = |from: usize, close: char| -> usize {
        let mut j = from;
        while j < chars.len() {
            match chars[j] {
                c if c == close => return j + 1,
                '"' | '\'' | '`' => j = skip_string(j),
                _ => j += 1,
            }
        }
        chars.len()
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => i = skip_string(i),
            '{' => i = skip_to(i, '}'),
            '[' => i = skip_to(i, ']'),
            '#' => i = skip_to(i, '\n'),
            '$' => {
                i += 1;
                if chars.get(i) == Some(&'{') {
                    i = skip_to(i, '}');
                } else {
                    while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                        i += 1;
                    }
                }
            }
            c if c.is_ascii_digit() || c == '.' => {
                while i < chars.len() && (chars[i].is_alphanumeric() || "._".contains(chars[i])) {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i]))
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut next = i;
                while next < chars.len() && chars[next].is_whitespace() {
                    next += 1;
                }
                let rest: String = chars[next..].iter().collect();
                // A function call, or an aggregation with its grouping first (`sum by (x) (..)`).
                let called = rest.starts_with('(')
                    || ["by", "without"].iter().any(|g| {
                        rest.strip_prefix(g)
                            .is_some_and(|after| after.trim_start().starts_with('('))
                    });
                if GROUPING.contains(&word.as_str()) && called {
                    i = skip_to(next, ')');
                } else if !called && !KEYWORDS.contains(&word.to_ascii_lowercase().as_str()) {
                    names.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

#[test]
fn metric_names_finds_the_selected_metrics_only() {
    let expr = r#"sum by (handler, le) (rate(worker_handler_duration_seconds_bucket{job=~"$job", handler="a{b}"}[$__rate_interval])) / on (job) group_left (x) max without (instance) (up offset 5m) > 1e3 and bool worker_ready"#;
    let names: Vec<String> = metric_names(expr).into_iter().collect();
    assert_eq!(
        names,
        [
            "up",
            "worker_handler_duration_seconds_bucket",
            "worker_ready"
        ]
    );
    assert!(is_worker_metric("worker_handler_duration_seconds_bucket"));
    assert!(!is_worker_metric("worker_messages_total_bucket"));
    assert!(!is_worker_metric("worker_lag"));
}
