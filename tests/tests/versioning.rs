//! Order-tolerant handlers: `apply_if_newer` skips stale versions. Versions 1..N of several
//! entities are published in random order (with repeats) to a handler with concurrency; each
//! entity ends at version N and no version was ever applied after a newer one.

use rand::seq::SliceRandom;
use serde::Deserialize;
use serde_json::json;
use sqlx::PgConnection;
use worker_core::transport::versioning::applied_version;
use worker_core::{apply_if_newer, Freshness};
use worker_core::{handler, Context, HandlerError};
use worker_tests::{eventually, TestEnv};

#[derive(Debug, Deserialize)]
struct Versioned {
    entity: String,
    version: i64,
}

/// Applies a versioned state event: the entity's state and a log of what was applied, both in
/// the dedup transaction.
#[handler(event = "Versioned", dedup, concurrency = 8)]
async fn versioned(
    event: Versioned,
    tx: &mut PgConnection,
    ctx: &Context,
) -> Result<(), HandlerError> {
    match apply_if_newer(tx, ctx.handler(), &event.entity, event.version).await? {
        Freshness::Stale { current } => {
            sqlx::query("INSERT INTO skipped (entity, version, current) VALUES ($1, $2, $3)")
                .bind(&event.entity)
                .bind(event.version)
                .bind(current)
                .execute(&mut *tx)
                .await?;
        }
        Freshness::Fresh { previous } => {
            sqlx::query(
                "INSERT INTO entity_state (entity, version) VALUES ($1, $2)
                 ON CONFLICT (entity) DO UPDATE SET version = EXCLUDED.version",
            )
            .bind(&event.entity)
            .bind(event.version)
            .execute(&mut *tx)
            .await?;
            sqlx::query("INSERT INTO applied (entity, version, previous) VALUES ($1, $2, $3)")
                .bind(&event.entity)
                .bind(event.version)
                .bind(previous)
                .execute(&mut *tx)
                .await?;
        }
    }
    Ok(())
}

async fn create_tables(env: &TestEnv) {
    for ddl in [
        "CREATE TABLE entity_state (entity TEXT PRIMARY KEY, version BIGINT NOT NULL)",
        "CREATE TABLE applied (seq BIGSERIAL PRIMARY KEY, entity TEXT NOT NULL, version BIGINT NOT NULL, previous BIGINT)",
        "CREATE TABLE skipped (entity TEXT NOT NULL, version BIGINT NOT NULL, current BIGINT NOT NULL)",
    ] {
        sqlx::query(ddl).execute(&env.pool).await.expect(ddl);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shuffled_versions_end_at_the_latest_and_never_go_back() {
    let env = TestEnv::new().await;
    create_tables(&env).await;
    let worker = worker_rabbitmq::Worker::builder()
        .handler(versioned)
        .settings(env.settings())
        .start()
        .await
        .expect("worker starts");

    let entities = 6;
    let versions = 25;
    let mut events: Vec<(String, i64, String)> = Vec::new();
    for e in 0..entities {
        for v in 1..=versions {
            events.push((format!("ent_{e}"), v, format!("evt_{e}_{v}")));
        }
        // The same version again under another event id (a producer retry): stale, skipped.
        events.push((format!("ent_{e}"), 3, format!("evt_{e}_3_again")));
    }
    events.shuffle(&mut rand::thread_rng());
    for (entity, version, id) in &events {
        env.publish_json(
            "Versioned",
            id,
            json!({"entity": entity, "version": version}),
        )
        .await;
    }
    let total = events.len() as i64;
    eventually("every event is processed", || async {
        env.count(
            "SELECT count(*) FROM processed_events WHERE handler = $1",
            "versioned",
        )
        .await
            == total
    })
    .await;
    worker.shutdown().await.expect("clean shutdown");

    for e in 0..entities {
        let entity = format!("ent_{e}");
        let state: i64 = sqlx::query_scalar("SELECT version FROM entity_state WHERE entity = $1")
            .bind(&entity)
            .fetch_one(&env.pool)
            .await
            .expect("state");
        assert_eq!(state, versions, "{entity} ends at the latest version");
        let applied: Vec<(i64, Option<i64>)> =
            sqlx::query_as("SELECT version, previous FROM applied WHERE entity = $1 ORDER BY seq")
                .bind(&entity)
                .fetch_all(&env.pool)
                .await
                .expect("applied");
        let mut last = None;
        for (version, previous) in &applied {
            assert_eq!(*previous, last, "{entity}: previous is the last applied");
            assert!(
                last.is_none_or(|l| *version > l),
                "{entity}: {version} applied after {last:?}"
            );
            last = Some(*version);
        }
        assert_eq!(last, Some(versions));
        let skipped: i64 = sqlx::query_scalar("SELECT count(*) FROM skipped WHERE entity = $1")
            .bind(&entity)
            .fetch_one(&env.pool)
            .await
            .expect("skipped");
        assert_eq!(
            applied.len() as i64 + skipped,
            versions + 1,
            "{entity}: every event either applied or skipped as stale"
        );
        let stale_skips: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM skipped WHERE entity = $1 AND version > current",
        )
        .bind(&entity)
        .fetch_one(&env.pool)
        .await
        .expect("skips");
        assert_eq!(stale_skips, 0, "{entity}: only stale versions were skipped");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freshness_verdicts_per_handler_and_entity() {
    let env = TestEnv::new().await;
    worker_core::transport::versioning::migrate(&env.pool, &env.config.db_schema)
        .await
        .expect("migration");
    let mut tx = env.pool.begin().await.expect("begin");
    assert_eq!(
        apply_if_newer(&mut tx, "h", "ent", 3).await.unwrap(),
        Freshness::Fresh { previous: None }
    );
    assert_eq!(
        apply_if_newer(&mut tx, "h", "ent", 2).await.unwrap(),
        Freshness::Stale { current: 3 }
    );
    assert_eq!(
        apply_if_newer(&mut tx, "h", "ent", 3).await.unwrap(),
        Freshness::Stale { current: 3 }
    );
    assert_eq!(
        apply_if_newer(&mut tx, "h", "ent", 5).await.unwrap(),
        Freshness::Fresh { previous: Some(3) }
    );
    assert_eq!(
        apply_if_newer(&mut tx, "other", "ent", 1).await.unwrap(),
        Freshness::Fresh { previous: None },
        "each handler tracks its own versions"
    );
    tx.rollback().await.expect("rollback");
    let mut conn = env.pool.acquire().await.expect("conn");
    assert_eq!(
        applied_version(&mut conn, "h", "ent").await.unwrap(),
        None,
        "a rolled-back transaction records nothing"
    );
}
