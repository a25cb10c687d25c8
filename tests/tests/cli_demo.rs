//! The README story on the example worker: `demo` publishes the burst, the outcomes are the
//! advertised ones, the issuer-down order is found by trace id and, once the switch is fixed,
//! replayed and charged exactly once; every paid order is shipped by the partitioned `ship-order`.
//! Also `handlers`, `topology --declare` (the partitioned handler's real topology), `--help` and
//! the exit code when the broker is unreachable.

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use serde_json::Value;
use worker_rabbitmq::cli::CliOutput;
use worker_tests::{eventually, TestEnv};

async fn cli(env: &TestEnv, args: &[&str]) -> CliOutput {
    let args = std::iter::once("order-worker").chain(args.iter().copied());
    order_worker::worker()
        .settings(env.settings())
        .run_with_args(args)
        .await
}

fn json_lines(output: &CliOutput) -> Vec<Value> {
    output
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

const CHARGES: &str = "SELECT count(*) FROM charges WHERE event_id = $1";
const RECEIPTS: &str = "SELECT count(*) FROM receipts WHERE event_id = $1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_outcomes_then_find_fix_and_replay() {
    // This test binary is the only one that touches the switch.
    std::env::set_var("PAYMENT_ISSUER_DOWN_FOR", "usr_77");
    worker_tests::ensure_consistent_hash_plugin();
    let mut env = TestEnv::new().await;
    // The README's story runs with the defaults: dead letters go on into the store.
    env.config.dlq_store = true;
    let worker = order_worker::worker()
        .settings(env.settings())
        .start()
        .await
        .expect("worker starts");
    let demo = cli(&env, &["demo", "--json"]).await;
    assert_eq!(demo.code, 0, "{}", demo.stderr);
    let published = json_lines(&demo);
    let id_ending = |suffix: &str| {
        published
            .iter()
            .find(|p| p["eventId"].as_str().is_some_and(|id| id.ends_with(suffix)))
            .map(|p| {
                (
                    p["eventId"].as_str().unwrap_or_default().to_owned(),
                    p["traceId"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .unwrap_or_else(|| panic!("no {suffix} in {published:?}"))
    };
    let (double, _) = id_ending("_dbl");
    let (flaky, _) = id_ending("_flaky");
    let (bad, bad_trace) = id_ending("_bad");
    let (issuer, issuer_trace) = id_ending("_issuer");

    eventually(
        "ordinary, double-clicked and flaky orders charged",
        || async {
            let mut done = true;
            for n in ["_1", "_2", "_3"] {
                done &= env.count(CHARGES, &id_ending(n).0).await == 1;
            }
            done && env.count(CHARGES, &double).await == 1
                && env.count(RECEIPTS, &double).await == 3
                && env.count(CHARGES, &flaky).await == 1
        },
    )
    .await;
    // Each paid order's OrderPaid went through the outbox to the partitioned ship-order.
    eventually("paid orders shipped", || async {
        let mut shipped = true;
        for n in ["_1", "_2", "_3", "_dbl", "_flaky"] {
            let order = id_ending(n).0.replacen("evt_", "ord_", 1);
            shipped &= env
                .count(
                    "SELECT count(*) FROM shipments WHERE order_id = $1 AND version = 1",
                    &order,
                )
                .await
                == 1;
        }
        shipped
    })
    .await;
    let charge_dlq = format!("{}.dlq", env.queue("charge-on-order-placed"));
    let pending = || async {
        env.count(
            "SELECT count(*) FROM dead_letters WHERE handler = $1 AND status = 'pending'",
            "charge-on-order-placed",
        )
        .await
    };
    eventually(
        "poison and issuer-down orders dead-lettered into the store",
        || async { pending().await == 2 && env.depth(&charge_dlq).await == 0 },
    )
    .await;

    // Find the poison order by a prefix of its trace id; it is in both handlers' DLQs.
    let found = cli(
        &env,
        &["dlq", "list", "--json", "--trace-id", &bad_trace[..8]],
    )
    .await;
    let found = json_lines(&found);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found
        .iter()
        .all(|r| r["originalMessage"]["id"] == bad.as_str()
            && r["failureMetadata"]["errorKind"] == "poison"));

    // The issuer-down order: retries exhausted, and the reason says which switch.
    let show = cli(&env, &["dlq", "show", &issuer, "--json"]).await;
    let record = &json_lines(&show)[0];
    assert_eq!(record["failureMetadata"]["attempts"], 12);
    assert_eq!(record["failureMetadata"]["errorKind"], "retryable");
    assert_eq!(record["failureMetadata"]["traceId"], issuer_trace.as_str());
    assert!(record["failureMetadata"]["lastError"]
        .as_str()
        .is_some_and(|e| e.contains("IssuerUnavailable")));
    assert_eq!(env.count(CHARGES, &issuer).await, 0);

    // Fix the cause (the gateway is state, read once when the worker is built: restart it, as
    // the README says), replay by trace id: charged exactly once.
    worker.shutdown().await.expect("shutdown");
    std::env::set_var("PAYMENT_ISSUER_DOWN_FOR", "none");
    let worker = order_worker::worker()
        .settings(env.settings())
        .start()
        .await
        .expect("worker restarts");
    let replay = cli(&env, &["dlq", "replay", "--trace-id", &issuer_trace[..10]]).await;
    assert_eq!(replay.code, 0, "{}", replay.stderr);
    eventually("the replayed order is charged", || async {
        env.count(CHARGES, &issuer).await == 1
    })
    .await;
    worker.shutdown().await.expect("shutdown");
    assert_eq!(env.count(CHARGES, &issuer).await, 1);
    assert_eq!(pending().await, 1, "only the poison order is left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_topology_help_and_exit_codes() {
    worker_tests::ensure_consistent_hash_plugin();
    let env = TestEnv::new().await;
    let handlers = cli(&env, &["handlers", "--json"]).await;
    assert_eq!(handlers.code, 0, "{}", handlers.stderr);
    let list = &json_lines(&handlers)[0];
    assert_eq!(list[0]["name"], "charge-on-order-placed");
    assert_eq!(list[0]["dedup"], true);
    assert_eq!(list[0]["retry"]["attempts"], 12);
    assert_eq!(list[1]["name"], "send-receipt");
    let ship = &list[2];
    assert_eq!(ship["name"], "ship-order");
    assert_eq!(ship["partition"]["key"], "orderId");
    assert_eq!(ship["partition"]["partitions"], 4);
    assert_eq!(ship["partition"]["header"], "x-partition-key");
    assert_eq!(list[0]["partition"], Value::Null);
    let table = cli(&env, &["handlers"]).await;
    assert!(table.stdout.starts_with("HANDLER"), "{}", table.stdout);
    assert!(
        table.stdout.contains("by orderId into 4"),
        "{}",
        table.stdout
    );

    let prefix = &env.broker.queue_prefix;
    let described = cli(&env, &["topology", "--json"]).await;
    assert_eq!(described.code, 0, "{}", described.stderr);
    let described = &json_lines(&described)[0];
    let hash = format!("{prefix}ship-order.partition");
    let exchanges = described["exchanges"].as_array().expect("exchanges");
    let exchange = exchanges
        .iter()
        .find(|x| x["name"] == hash.as_str())
        .unwrap_or_else(|| panic!("{hash} in {exchanges:?}"));
    assert_eq!(exchange["type"], "x-consistent-hash");
    assert_eq!(exchange["hashHeader"], "x-partition-key");
    assert_eq!(
        exchange["boundTo"]["exchange"],
        env.broker.exchange.as_str()
    );
    assert_eq!(exchange["boundTo"]["routingKey"], "OrderPaid");
    let queues = described["queues"].as_array().expect("queues");
    let queue = |name: String| {
        queues
            .iter()
            .find(|q| q["name"] == name.as_str())
            .unwrap_or_else(|| panic!("{name} in {queues:?}"))
            .clone()
    };
    let ship_work = queue(format!("{prefix}ship-order"));
    assert_eq!(
        ship_work["boundTo"],
        Value::Null,
        "replays only: {ship_work}"
    );
    assert_eq!(ship_work["forwardsTo"], hash.as_str());
    for k in 0..4 {
        let partition = queue(format!("{prefix}ship-order.p{k}"));
        assert_eq!(partition["singleActiveConsumer"], true);
        assert_eq!(partition["boundTo"]["exchange"], hash.as_str());
    }
    assert!(
        !queues
            .iter()
            .any(|q| q["name"] == format!("{prefix}ship-order.retry.1").as_str()),
        "a partitioned handler retries in place: no delay queues"
    );

    let topology = cli(&env, &["topology", "--declare"]).await;
    assert_eq!(topology.code, 0, "{}", topology.stderr);
    assert!(topology.stdout.contains(".dlq"), "{}", topology.stdout);
    assert!(
        topology
            .stdout
            .contains(&format!("exchange {hash} (x-consistent-hash")),
        "{}",
        topology.stdout
    );
    let channel = env.connection.create_channel().await.expect("channel");
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    for queue in [
        "charge-on-order-placed",
        "charge-on-order-placed.dlq",
        "send-receipt.retry.1",
        "ship-order",
        "ship-order.p0",
        "ship-order.p3",
    ] {
        channel
            .queue_declare(
                format!("{}{queue}", env.broker.queue_prefix).into(),
                passive,
                FieldTable::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("{queue} declared: {e}"));
    }
    assert_eq!(
        env.consumers(&env.queue("charge-on-order-placed")).await,
        0,
        "nothing consumed"
    );

    let help = cli(&env, &["dlq", "replay", "--help"]).await;
    assert_eq!(help.code, 0);
    assert!(help.stdout.contains("Examples:"), "{}", help.stdout);
    assert_eq!(cli(&env, &["dlq", "frobnicate"]).await.code, 2);

    let mut unreachable = env.settings();
    unreachable.broker.url = "amqp://guest:guest@127.0.0.1:1/%2f".into();
    let down = order_worker::worker()
        .settings(unreachable)
        .run_with_args(["order-worker", "dlq", "list"])
        .await;
    assert_eq!(down.code, 4, "{down:?}");
    assert!(
        down.stderr.contains("cannot connect to RabbitMQ"),
        "{}",
        down.stderr
    );
}
