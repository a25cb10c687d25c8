//! Two applications on one database and one broker, each with its default settings: a handler
//! of the same name on the same event type and migration histories of their own. Each gets every
//! event, processes it once in its own schema, and neither fails at start-up (they would share
//! `_sqlx_migrations`, the dedup table and the work queue if the defaults did not keep them apart).

use std::time::Duration;

use tokio::process::{Child, Command};
use worker_tests::{eventually, remove_namespace, TestEnv};

/// The binaries' names are the applications' names: schemas and queue prefixes derive from them.
const APPS: [(&str, &str); 2] = [
    (env!("CARGO_BIN_EXE_billing_app"), "billing_app"),
    (env!("CARGO_BIN_EXE_shipping_app"), "shipping_app"),
];

/// Removes both applications' queues and schemas, before the test (a run killed earlier) and
/// after it (also when it panics).
struct Apps;

impl Apps {
    fn clean() {
        for (_, app) in APPS {
            remove_namespace(&format!("{app}."), &[], &[app]);
        }
    }
}

impl Drop for Apps {
    fn drop(&mut self) {
        Apps::clean();
    }
}

/// Starts `binary` with nothing but the broker, the database, the exchange of this test and a
/// free metrics port (the one default two processes on one host cannot share).
fn start(binary: &str, env: &TestEnv) -> Child {
    Command::new(binary)
        .env_remove("WORKER_APP")
        .env_remove("WORKER_DB_SCHEMA")
        .env_remove("WORKER_QUEUE_PREFIX")
        .env_remove("WORKER_CONSUMER")
        .env("AMQP_URL", &env.broker.url)
        .env("DATABASE_URL", &env.config.database_url)
        .env("WORKER_EXCHANGE", &env.broker.exchange)
        .env("WORKER_METRICS_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .expect("start the app")
}

async fn rows(env: &TestEnv, sql: &str) -> Vec<(String, String)> {
    sqlx::query_as(sql)
        .fetch_all(&env.pool)
        .await
        .unwrap_or_default()
}

#[tokio::test]
async fn two_applications_with_default_settings_share_a_database_and_a_broker() {
    Apps::clean();
    let _apps = Apps;
    let env = TestEnv::new().await;
    let mut children: Vec<Child> = APPS.iter().map(|(bin, _)| start(bin, &env)).collect();
    for (_, app) in APPS {
        let queue = format!("{app}.on-order-placed");
        eventually(&format!("{app} consumes from {queue}"), || async {
            env.consumers(&queue).await == 1
        })
        .await;
    }

    let order = serde_json::json!({"orderId": "ord_1", "amount": 100});
    for id in ["evt_a", "evt_b", "evt_b", "evt_c"] {
        env.publish_json("OrderPlaced", id, order.clone()).await;
    }

    let expected = |schema: &str| -> Vec<(String, String)> {
        ["evt_a", "evt_b", "evt_c"]
            .iter()
            .map(|id| ((*id).to_owned(), schema.to_owned()))
            .collect()
    };
    let invoices = "SELECT event_id, schema_name FROM billing_app.invoices ORDER BY event_id";
    let parcels = "SELECT event_id, schema_name FROM shipping_app.parcels ORDER BY event_id";
    eventually("both apps processed every event", || async {
        rows(&env, invoices).await.len() >= 3 && rows(&env, parcels).await.len() >= 3
    })
    .await;
    // Settle time for a wrong second copy of `evt_b` (a dedup table shared across the apps
    // would instead have dropped one app's copies as duplicates of the other's).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rows(&env, invoices).await, expected("billing_app"));
    assert_eq!(rows(&env, parcels).await, expected("shipping_app"));

    // Each app's migrations are recorded in its own schema, and both are still running.
    for (app, version) in [
        ("billing_app", 20260101000000_i64),
        ("shipping_app", 20260202000000),
    ] {
        let versions: Vec<i64> = sqlx::query_scalar(&format!(
            "SELECT version FROM {app}._sqlx_migrations ORDER BY version"
        ))
        .fetch_all(&env.pool)
        .await
        .expect("the app's own migration records");
        assert_eq!(versions, [version], "{app}");
    }
    for child in &mut children {
        assert!(
            child.try_wait().expect("poll").is_none(),
            "an app stopped: {child:?}"
        );
    }
    for child in &mut children {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
}
