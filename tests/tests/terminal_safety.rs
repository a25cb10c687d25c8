//! Terminal safety (issue 15): strings that came from a producer or a handler (event ids,
//! headers, payloads, error texts) are printed with their control characters escaped in the
//! tables and details of the commands, while `--json` keeps them exact. Two events carrying
//! escape sequences in their id, a header and the handler's error are dead-lettered through the
//! real broker (one published as a producer would, one with `publish`), then every `dlq`
//! command looks at them.

use lapin::types::{FieldTable, ShortString};
use lapin::BasicProperties;
use serde::Deserialize;
use serde_json::Value;
use worker_core::{handler, Context, HandlerError};
use worker_rabbitmq::cli::CliOutput;
use worker_rabbitmq::{Worker, WorkerBuilder};
use worker_tests::{eventually, text, TestEnv};

/// Clears the screen, sets the window title, moves the cursor with the one-character CSI
/// (U+009B), reverses the text direction, rings the bell, returns the carriage.
const NASTY: &str = "\x1b[2J\x1b]0;pwned\x07\u{9b}1;1H\u{202e}\r\x1b[31m";

/// The id of the event a producer publishes.
fn producer_id() -> String {
    format!("evt_{NASTY}_producer")
}

/// The id of the event `publish` sends.
fn cli_id() -> String {
    format!("evt_{NASTY}_cli")
}

/// A header value.
fn header_value() -> String {
    format!("note {NASTY}\nfake line")
}

#[derive(Debug, Deserialize)]
struct Echo {
    message: String,
}

/// Fails as poison with a text from the payload and the event id: a handler that puts
/// producer data in its error, as many do.
#[handler(event = "Echo", name = "echo")]
async fn echo(event: Echo, ctx: &Context) -> Result<(), HandlerError> {
    Err(HandlerError::poison(format!(
        "EchoError: {} (event {})",
        event.message,
        ctx.event_id()
    )))
}

/// The error the handler gives for `id`.
fn error_of(id: &str) -> String {
    format!("EchoError: boom {NASTY} (event {id})")
}

fn builder(env: &TestEnv) -> WorkerBuilder {
    Worker::builder().handler(echo).settings(env.settings())
}

async fn cli(env: &TestEnv, args: &[&str]) -> CliOutput {
    let args = std::iter::once("worker").chain(args.iter().copied());
    builder(env).run_with_args(args).await
}

/// Characters a terminal acts on: control characters (C0 with ESC, DEL, C1) and the
/// bidirectional formatting characters.
fn acted_on(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// `output` ran well and holds no character a terminal acts on but the line breaks.
fn assert_safe(what: &str, output: &CliOutput, code: u8) {
    assert_eq!(output.code, code, "{what}: {output:?}");
    for (stream, text) in [("stdout", &output.stdout), ("stderr", &output.stderr)] {
        if let Some(c) = text.chars().find(|&c| c != '\n' && acted_on(c)) {
            panic!("{what}: {stream} holds {c:?} raw: {text:?}");
        }
    }
}

/// The escaped form the human output shows for [`NASTY`].
const SHOWN: &str = r"\u001b[2J\u001b]0;pwned\u0007\u009b1;1H\u202e\r\u001b[31m";

fn json_lines(output: &CliOutput) -> Vec<Value> {
    output
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_strings_are_escaped_for_people_and_exact_in_json() {
    let env = TestEnv::new().await;
    let worker = builder(&env).start().await.expect("worker starts");

    let mut headers = FieldTable::default();
    headers.insert(ShortString::from("x-note"), text(&header_value()));
    let body = serde_json::to_vec(&serde_json::json!({ "message": format!("boom {NASTY}") }))
        .expect("json");
    let properties = BasicProperties::default()
        .with_message_id(ShortString::from(producer_id()))
        .with_content_type(ShortString::from("application/json"))
        .with_headers(headers);
    env.publish("Echo", &body, properties).await;

    let payload = serde_json::json!({ "message": format!("boom {NASTY}") }).to_string();
    let header = format!("x-note={}", header_value());
    let published = cli(
        &env,
        &[
            "publish",
            "Echo",
            &payload,
            "--id",
            &cli_id(),
            "--header",
            &header,
        ],
    )
    .await;
    assert_safe("publish", &published, 0);
    assert!(published.stdout.contains(SHOWN), "{published:?}");

    let dlq = format!("{}.dlq", env.queue("echo"));
    eventually("2 records in the DLQ", || async {
        env.depth(&dlq).await >= 2
    })
    .await;
    worker.shutdown().await.expect("shutdown");

    // People: the table, the details, the counts, what replay and purge would do.
    let list = cli(&env, &["dlq", "list"]).await;
    assert_safe("dlq list", &list, 0);
    for id in [producer_id(), cli_id()] {
        let shown = id.replace(NASTY, SHOWN);
        assert!(list.stdout.contains(&shown), "{shown} in {list:?}");
    }
    assert!(
        list.stdout
            .contains(&format!("EchoError: boom {SHOWN} (event evt_{SHOWN}_")),
        "{list:?}"
    );
    // One line per dead letter, the header and the summary: no line broken by the data.
    assert_eq!(list.stdout.lines().count(), 4, "{list:?}");

    for id in [producer_id(), cli_id()] {
        let show = cli(&env, &["dlq", "show", &id]).await;
        assert_safe("dlq show", &show, 0);
        let shown = id.replace(NASTY, SHOWN);
        assert!(
            show.stdout.starts_with(&format!("{shown} — entry ")),
            "{show:?}"
        );
        assert!(
            show.stdout
                .contains(&format!("    {}", error_of(&id).replace(NASTY, SHOWN))),
            "{show:?}"
        );
        // The header's newline is inside a JSON string of the block: it stays `\n`.
        assert!(
            show.stdout
                .contains(&format!(r#""x-note": "note {SHOWN}\nfake line""#)),
            "{show:?}"
        );
    }

    let stats = cli(&env, &["dlq", "stats"]).await;
    assert_safe("dlq stats", &stats, 0);
    assert!(stats.stdout.contains(SHOWN), "{stats:?}");

    let replay = cli(&env, &["dlq", "replay", "--all", "--dry-run"]).await;
    assert_safe("dlq replay --dry-run", &replay, 0);
    assert!(
        replay.stdout.contains(&cli_id().replace(NASTY, SHOWN)),
        "{replay:?}"
    );

    let purge = cli(&env, &["dlq", "purge", &producer_id()]).await;
    assert_safe("dlq purge without --yes", &purge, 0);
    assert!(
        purge.stdout.contains(&producer_id().replace(NASTY, SHOWN)),
        "{purge:?}"
    );

    // Not found: the operator's argument comes back escaped in the error too.
    let missing = format!("evt_{NASTY}_missing");
    let nothing = cli(&env, &["dlq", "show", &missing]).await;
    assert_safe("dlq show (no match)", &nothing, 3);
    assert!(
        nothing.stderr.contains(&missing.replace(NASTY, SHOWN)),
        "{nothing:?}"
    );

    // Scripts: the exact strings.
    let listed = cli(&env, &["dlq", "list", "--json"]).await;
    assert_safe("dlq list --json", &listed, 0);
    let records = json_lines(&listed);
    let mut ids: Vec<&str> = records
        .iter()
        .map(|r| r["originalMessage"]["id"].as_str().expect("id"))
        .collect();
    ids.sort();
    let (cli_id, producer_id) = (cli_id(), producer_id());
    assert_eq!(ids, [cli_id.as_str(), producer_id.as_str()]);
    for record in &records {
        let id = record["originalMessage"]["id"].as_str().expect("id");
        assert_eq!(
            record["failureMetadata"]["lastError"],
            error_of(id).as_str()
        );
        assert_eq!(
            record["originalMessage"]["headers"]["x-note"],
            header_value().as_str()
        );
        assert_eq!(
            record["originalMessage"]["payload"]["message"],
            format!("boom {NASTY}").as_str()
        );
    }

    let shown = cli(&env, &["dlq", "show", &producer_id, "--json"]).await;
    assert_safe("dlq show --json", &shown, 0);
    let records = json_lines(&shown);
    assert_eq!(records.len(), 1, "{shown:?}");
    assert_eq!(records[0]["originalMessage"]["id"], producer_id.as_str());
    assert_eq!(
        records[0]["originalMessage"]["properties"]["headers"]["x-note"]["value"],
        header_value().as_str()
    );

    let counted = cli(&env, &["dlq", "stats", "--json"]).await;
    assert_safe("dlq stats --json", &counted, 0);
    let stats = json_lines(&counted);
    let groups = stats[0]["groups"].as_array().expect("groups");
    assert!(
        groups.iter().all(|g| {
            let example = g["exampleEventId"].as_str().unwrap_or("");
            example == producer_id || example == cli_id
        }),
        "{counted:?}"
    );

    let replayed = cli(&env, &["dlq", "replay", "--all", "--dry-run", "--json"]).await;
    assert_safe("dlq replay --dry-run --json", &replayed, 0);
    let mut ids: Vec<String> = json_lines(&replayed)
        .iter()
        .map(|a| a["eventId"].as_str().expect("event id").to_owned())
        .collect();
    ids.sort();
    assert_eq!(ids, [cli_id.clone(), producer_id.clone()]);

    // Browsing changed nothing.
    assert_eq!(env.depth(&dlq).await, 2);
}
