//! The framework's versioned migrations against the real PostgreSQL: a fresh schema, a schema
//! created by the releases before versions existed, concurrent start-ups, and a database newer
//! than the worker.

use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Row};
use worker_core::transport::dedup::Identifier;
use worker_core::transport::migrations::{self, Applied, MigrationError, FRAMEWORK};
use worker_tests::handlers::scripted;
use worker_tests::{database_url, TestEnv};

/// Every (component, version) the code knows, in the order they are applied.
fn every_version() -> Vec<(String, i32)> {
    FRAMEWORK
        .iter()
        .flat_map(|c| c.migrations.iter().map(|m| (c.name.to_owned(), m.version)))
        .collect()
}

fn pairs(applied: &[Applied]) -> Vec<(String, i32)> {
    applied
        .iter()
        .map(|a| (a.component.to_owned(), a.version))
        .collect()
}

/// The rows of the bookkeeping table: (component, version, description, applied_at as text).
async fn ledger(env: &TestEnv) -> Vec<(String, i32, String, String)> {
    sqlx::query(&format!(
        "SELECT component, version, description, applied_at::text FROM \"{}\".worker_schema_migrations ORDER BY component, version",
        env.id
    ))
    .fetch_all(&env.pool)
    .await
    .expect("read worker_schema_migrations")
    .into_iter()
    .map(|row| (row.get(0), row.get(1), row.get(2), row.get(3)))
    .collect()
}

async fn table_exists(env: &TestEnv, table: &str) -> bool {
    sqlx::query_scalar::<_, bool>("SELECT to_regclass($1) IS NOT NULL")
        .bind(format!("\"{}\".{table}", env.id))
        .fetch_one(&env.pool)
        .await
        .expect("to_regclass")
}

fn schema(env: &TestEnv) -> Identifier {
    env.config.db_schema.clone()
}

#[tokio::test]
async fn a_fresh_schema_gets_every_table_and_records_every_version() {
    let env = TestEnv::new().await;
    assert!(!table_exists(&env, "worker_schema_migrations").await);

    let applied = migrations::run_framework(&env.pool, &schema(&env))
        .await
        .expect("migrate a fresh schema");

    assert_eq!(pairs(&applied), every_version());
    for table in ["processed_events", "outbox", "entity_versions"] {
        assert!(table_exists(&env, table).await, "{table} missing");
    }
    let recorded = ledger(&env).await;
    let mut expected: Vec<(String, i32, String)> = FRAMEWORK
        .iter()
        .flat_map(|c| {
            c.migrations
                .iter()
                .map(|m| (c.name.to_owned(), m.version, m.description.to_owned()))
        })
        .collect();
    expected.sort();
    assert_eq!(
        recorded
            .iter()
            .map(|(c, v, d, _)| (c.clone(), *v, d.clone()))
            .collect::<Vec<_>>(),
        expected
    );
}

/// The DDL the releases before versioned migrations ran at every start-up, statement for
/// statement (`git show 0ca8fcf:worker-core/src/{dedup,outbox,versioning}/migrations.rs`).
fn unversioned_ddl(s: &str) -> Vec<String> {
    vec![
        // dedup
        format!("CREATE SCHEMA IF NOT EXISTS {s}"),
        format!(
            "CREATE TABLE IF NOT EXISTS {s}.processed_events (
            handler      TEXT        NOT NULL,
            event_id     TEXT        NOT NULL,
            processed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            PRIMARY KEY (handler, event_id)
        )"
        ),
        format!(
            "CREATE INDEX IF NOT EXISTS processed_events_processed_at_idx ON {s}.processed_events (processed_at)"
        ),
        // outbox
        format!(
            "CREATE TABLE IF NOT EXISTS {s}.outbox (
                id              BIGSERIAL   PRIMARY KEY,
                event_id        TEXT        NOT NULL,
                aggregate_id    TEXT        NOT NULL,
                event_type      TEXT        NOT NULL,
                payload         JSONB       NOT NULL,
                headers         JSONB       NOT NULL DEFAULT '{{}}',
                created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
                published_at    TIMESTAMPTZ,
                attempts        INT         NOT NULL DEFAULT 0,
                last_error      TEXT,
                next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now()
            )"
        ),
        format!(
            "CREATE INDEX IF NOT EXISTS outbox_unpublished_idx ON {s}.outbox (id) WHERE published_at IS NULL"
        ),
        format!(
            "CREATE INDEX IF NOT EXISTS outbox_unpublished_aggregate_idx ON {s}.outbox (aggregate_id, id) WHERE published_at IS NULL"
        ),
        format!(
            "CREATE INDEX IF NOT EXISTS outbox_published_at_idx ON {s}.outbox (published_at) WHERE published_at IS NOT NULL"
        ),
        format!(
            "CREATE OR REPLACE FUNCTION {s}.outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 PERFORM pg_notify('worker_outbox', TG_TABLE_SCHEMA);
                 RETURN NULL;
             END $$"
        ),
        format!(
            "DO $$ BEGIN
                 IF NOT EXISTS (SELECT 1 FROM pg_trigger
                                WHERE tgname = 'outbox_notify' AND tgrelid = '{s}.outbox'::regclass) THEN
                     CREATE TRIGGER outbox_notify AFTER INSERT ON {s}.outbox
                     FOR EACH STATEMENT EXECUTE FUNCTION {s}.outbox_notify();
                 END IF;
             END $$"
        ),
        // versioning
        format!(
            "CREATE TABLE IF NOT EXISTS {s}.entity_versions (
            handler    TEXT        NOT NULL,
            entity_id  TEXT        NOT NULL,
            version    BIGINT      NOT NULL,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            PRIMARY KEY (handler, entity_id)
        )"
        ),
    ]
}

#[tokio::test]
async fn a_schema_created_before_versions_is_adopted_with_its_rows_and_a_second_run_is_a_no_op() {
    let env = TestEnv::new().await;
    let s = format!("\"{}\"", env.id);
    for statement in unversioned_ddl(&s) {
        sqlx::query(&statement)
            .execute(&env.pool)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
    sqlx::query(&format!(
        "INSERT INTO {s}.processed_events (handler, event_id, processed_at) VALUES ('charge', 'evt_old', '2026-01-02T03:04:05Z')"
    ))
    .execute(&env.pool)
    .await
    .expect("dedup row");
    sqlx::query(&format!(
        "INSERT INTO {s}.outbox (event_id, aggregate_id, event_type, payload) VALUES ('evt_out', 'ord_1', 'OrderPaid', '{{}}')"
    ))
    .execute(&env.pool)
    .await
    .expect("outbox row");
    sqlx::query(&format!(
        "INSERT INTO {s}.entity_versions (handler, entity_id, version) VALUES ('ship', 'ord_1', 7)"
    ))
    .execute(&env.pool)
    .await
    .expect("entity_versions row");
    assert!(!table_exists(&env, "worker_schema_migrations").await);

    let applied = migrations::run_framework(&env.pool, &schema(&env))
        .await
        .expect("adopt the unversioned schema");
    assert_eq!(pairs(&applied), every_version());

    let kept: (String, String, bool) = sqlx::query_as(&format!(
        "SELECT handler, event_id, processed_at = '2026-01-02T03:04:05Z'::timestamptz FROM {s}.processed_events"
    ))
    .fetch_one(&env.pool)
    .await
    .expect("the dedup row");
    assert_eq!(kept, ("charge".to_owned(), "evt_old".to_owned(), true));
    let outbox: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {s}.outbox WHERE event_id = 'evt_out' AND published_at IS NULL"
    ))
    .fetch_one(&env.pool)
    .await
    .expect("count outbox");
    assert_eq!(outbox, 1);
    let version: i64 = sqlx::query_scalar(&format!(
        "SELECT version FROM {s}.entity_versions WHERE entity_id = 'ord_1'"
    ))
    .fetch_one(&env.pool)
    .await
    .expect("entity version");
    assert_eq!(version, 7);
    let triggers: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_trigger WHERE tgname = 'outbox_notify' AND tgrelid = to_regclass($1)",
    )
    .bind(format!("{s}.outbox"))
    .fetch_one(&env.pool)
    .await
    .expect("count triggers");
    assert_eq!(triggers, 1, "version 1 must not add a second trigger");

    let recorded = ledger(&env).await;
    let mut expected = every_version();
    expected.sort();
    assert_eq!(
        recorded
            .iter()
            .map(|(c, v, _, _)| (c.clone(), *v))
            .collect::<Vec<_>>(),
        expected
    );

    let again = migrations::run_framework(&env.pool, &schema(&env))
        .await
        .expect("second run");
    assert_eq!(again, Vec::<Applied>::new(), "nothing left to apply");
    assert_eq!(ledger(&env).await, recorded, "the bookkeeping is unchanged");
}

/// A pool of one connection, as a separate worker process would have.
async fn worker_pool(env: &TestEnv) -> PgPool {
    PgPoolOptions::new()
        .max_connections(1)
        .connect(&database_url())
        .await
        .unwrap_or_else(|e| panic!("connect for {}: {e}", env.id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_starting_at_once_migrate_once() {
    let env = TestEnv::new().await;
    let mut pools = Vec::new();
    for _ in 0..4 {
        pools.push(worker_pool(&env).await);
    }
    let runs = pools.iter().map(|pool| {
        let schema = schema(&env);
        async move { migrations::run_framework(pool, &schema).await }
    });
    let results = futures::future::join_all(runs).await;

    let mut applied = Vec::new();
    for result in results {
        applied.extend(pairs(&result.expect("every concurrent run succeeds")));
    }
    applied.sort();
    let mut expected = every_version();
    expected.sort();
    assert_eq!(applied, expected, "each version applied by exactly one run");
    assert_eq!(ledger(&env).await.len(), expected.len());
    for pool in pools {
        pool.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrating_waits_for_the_schema_lock_and_releases_it() {
    let env = TestEnv::new().await;
    let key = migrations::lock_key(&schema(&env));
    let holder = worker_pool(&env).await;
    let mut held = holder.acquire().await.expect("holder connection");
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(key)
        .execute(&mut *held)
        .await
        .expect("hold the lock");

    let pool = env.pool.clone();
    let schema_name = schema(&env);
    let run = tokio::spawn(async move { migrations::run_framework(&pool, &schema_name).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!run.is_finished(), "the run went ahead without the lock");
    assert!(
        !table_exists(&env, "worker_schema_migrations").await,
        "the run changed the schema without the lock"
    );

    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(key)
        .execute(&mut *held)
        .await
        .expect("give the lock back");
    let applied = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the run finishes once the lock is free")
        .expect("no panic")
        .expect("migrate");
    assert_eq!(pairs(&applied), every_version());

    // The run gave the lock back: another session can take it at once.
    let free: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(key)
        .fetch_one(&mut *held)
        .await
        .expect("try the lock");
    assert!(free, "the migration lock was left held");
    drop(held);
    holder.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_migrated_by_a_newer_worker_is_refused() {
    let env = TestEnv::new().await;
    migrations::run_framework(&env.pool, &schema(&env))
        .await
        .expect("first migration");
    let known = FRAMEWORK
        .iter()
        .find(|c| c.name == "outbox")
        .expect("the outbox component")
        .latest();
    sqlx::query(&format!(
        "INSERT INTO \"{}\".worker_schema_migrations (component, version, description) VALUES ('outbox', $1, 'from a newer release')",
        env.id
    ))
    .bind(known + 1)
    .execute(&env.pool)
    .await
    .expect("record a newer version");
    let before = ledger(&env).await;

    let error = migrations::run_framework(&env.pool, &schema(&env))
        .await
        .expect_err("a newer database must be refused");
    match &error {
        MigrationError::NewerThanCode {
            schema,
            component,
            recorded,
            known: code_knows,
        } => {
            assert_eq!(
                (schema.as_str(), *component, *recorded, *code_knows),
                (env.id.as_str(), "outbox", known + 1, known)
            );
        }
        other => panic!("expected NewerThanCode, got {other:?}"),
    }
    let message = error.to_string();
    assert!(
        message.contains(&format!("is at outbox version {}", known + 1))
            && message.contains(&format!("knows only versions up to {known}"))
            && message.contains("newer release"),
        "{message}"
    );
    assert_eq!(ledger(&env).await, before, "nothing applied or recorded");

    // The worker's start-up stops on it, before it touches the broker.
    let started = worker_rabbitmq::Worker::builder()
        .handler(scripted)
        .settings(env.settings())
        .start()
        .await;
    match started {
        Err(worker_rabbitmq::WorkerError::Migration(reason)) => {
            assert_eq!(reason, message);
        }
        Err(other) => panic!("expected a migration error, got {other}"),
        Ok(worker) => {
            worker.shutdown().await.expect("shutdown");
            panic!("the worker started on a database newer than itself");
        }
    }
}

#[tokio::test]
async fn a_newer_component_stops_the_run_before_any_other_component_is_applied() {
    let env = TestEnv::new().await;
    // Only the outbox is migrated; the versioning component, last in FRAMEWORK, is recorded at a
    // version this code does not know.
    worker_core::transport::outbox::migrate(&env.pool, &schema(&env))
        .await
        .expect("migrate the outbox alone");
    let known = worker_core::transport::versioning::COMPONENT.latest();
    sqlx::query(&format!(
        "INSERT INTO \"{}\".worker_schema_migrations (component, version, description) VALUES ('versioning', $1, 'from a newer release')",
        env.id
    ))
    .bind(known + 1)
    .execute(&env.pool)
    .await
    .expect("record a newer version");

    let error = migrations::run_framework(&env.pool, &schema(&env))
        .await
        .expect_err("a newer database must be refused");
    assert!(
        matches!(
            error,
            MigrationError::NewerThanCode { component: "versioning", recorded, .. } if recorded == known + 1
        ),
        "{error:?}"
    );
    // dedup comes first in FRAMEWORK and was missing: it must not have been applied.
    assert!(!table_exists(&env, "processed_events").await);
    assert!(!table_exists(&env, "entity_versions").await);
}
