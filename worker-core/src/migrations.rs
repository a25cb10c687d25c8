//! The framework's versioned migrations: the tables the framework owns (`processed_events`,
//! `outbox`, `entity_versions`) are created and upgraded by numbered steps, recorded in the
//! configured schema's `worker_schema_migrations` table.
//!
//! Each [`Component`] has an ordered list of [`Migration`]s. [`run`] takes a Postgres advisory
//! lock derived from the schema name (so workers starting at once migrate once, and workers of
//! other schemas do not wait), reads what is recorded, refuses to go on when the database holds a
//! version newer than this code knows ([`MigrationError::NewerThanCode`]), then applies every
//! missing version in order, each in a transaction of its own together with its record.
//!
//! ```sql
//! CREATE TABLE <schema>.worker_schema_migrations (
//!   component   TEXT        NOT NULL,   -- "dedup", "outbox", "versioning"
//!   version     INT         NOT NULL,
//!   description TEXT        NOT NULL,
//!   applied_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
//!   PRIMARY KEY (component, version)
//! );
//! ```
//!
//! The table is the framework's own; sqlx's `_sqlx_migrations` belongs to the application's
//! migrations (`WorkerBuilder::migrations`), which run after these. Version 1 of every component
//! is the `IF NOT EXISTS` DDL the framework ran before it had versions, so a database created
//! then is adopted: version 1 finds its tables and only records itself. A later version is plain
//! DDL (`ALTER TABLE ...`) appended to its component's list; a version, once released, is never
//! edited.
//!
//! ```no_run
//! # async fn example(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
//! use worker_core::transport::dedup::Identifier;
//!
//! let schema = Identifier::new("worker")?;
//! let applied = worker_core::transport::migrations::run_framework(&pool, &schema).await?;
//! println!("{} migrations applied", applied.len());
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, BTreeSet};

use sqlx::{Connection, Executor, PgConnection, PgPool};

use crate::dedup::identifier::Identifier;

/// The bookkeeping table, in the configured schema.
pub const TABLE: &str = "worker_schema_migrations";

/// Replaced by the quoted schema name in [`Migration::sql`].
pub const SCHEMA_PLACEHOLDER: &str = "{schema}";

/// Every component of the framework, in the order a worker migrates them.
pub const FRAMEWORK: [&Component; 3] = [
    &crate::dedup::migrations::COMPONENT,
    &crate::outbox::migrations::COMPONENT,
    &crate::versioning::migrations::COMPONENT,
];

/// The advisory lock key every worker took before versioned migrations existed (`"wkr-migr"` in
/// ASCII), for every schema at once. Each migration's transaction still takes it, so a worker of
/// an older release starting during a rolling upgrade cannot run its `IF NOT EXISTS` DDL at the
/// same moment as version 1 (two concurrent `CREATE TABLE IF NOT EXISTS` can fail).
const LEGACY_LOCK_KEY: i64 = 0x776b_722d_6d69_6772;

/// One numbered step of a component's schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    /// 1, 2, 3, ...: the order of application.
    pub version: i32,
    /// What the step does, recorded with it (for whoever reads the table).
    pub description: &'static str,
    /// One or more statements; [`SCHEMA_PLACEHOLDER`] stands for the quoted schema.
    pub sql: &'static str,
}

/// The tables of one part of the framework and their migrations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Component {
    /// The name recorded in `worker_schema_migrations.component`.
    pub name: &'static str,
    /// Versions 1, 2, ... in order.
    pub migrations: &'static [Migration],
}

impl Component {
    /// The newest version this code knows (0 for a component without migrations).
    pub fn latest(&self) -> i32 {
        self.migrations.last().map_or(0, |m| m.version)
    }
}

/// A migration [`run`] applied (one that was already recorded is not listed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// The component's name.
    pub component: &'static str,
    /// The version applied.
    pub version: i32,
}

/// Why the framework's tables could not be brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// The database refused a step of the bookkeeping (connecting, the lock, the migrations
    /// table).
    #[error("cannot migrate schema `{schema}`: {step}: {source}")]
    Database {
        /// The configured schema.
        schema: String,
        /// What was being done.
        step: &'static str,
        /// The database's error.
        #[source]
        source: sqlx::Error,
    },
    /// One migration failed; it was rolled back and nothing after it ran.
    #[error(
        "schema `{schema}`: {component} migration {version} ({description}) failed and was rolled back: {source}"
    )]
    Failed {
        /// The configured schema.
        schema: String,
        /// The component.
        component: &'static str,
        /// The version that failed.
        version: i32,
        /// Its description.
        description: &'static str,
        /// The database's error.
        #[source]
        source: sqlx::Error,
    },
    /// The database was migrated by a newer release of the worker: this one does not know the
    /// tables' current shape and must not run against them.
    #[error(
        "schema `{schema}` is at {component} version {recorded} (see `{schema}.{TABLE}`), but this worker knows only versions up to {known}: the database was migrated by a newer release of the worker; run that release or a newer one"
    )]
    NewerThanCode {
        /// The configured schema.
        schema: String,
        /// The component.
        component: &'static str,
        /// The newest version recorded in the database.
        recorded: i32,
        /// The newest version this code knows.
        known: i32,
    },
}

/// Applies every component of the framework ([`FRAMEWORK`]) in `schema`; see [`run`].
pub async fn run_framework(
    pool: &PgPool,
    schema: &Identifier,
) -> Result<Vec<Applied>, MigrationError> {
    run(pool, schema, &FRAMEWORK).await
}

/// Brings `components` up to date in `schema` (created if missing), under the schema's advisory
/// lock, and returns what it applied (empty when everything was recorded already).
pub async fn run(
    pool: &PgPool,
    schema: &Identifier,
    components: &[&Component],
) -> Result<Vec<Applied>, MigrationError> {
    // A connection taken out of the pool: the session-level lock ends with the session when the
    // connection closes, also when this future is dropped half-way. A pooled connection would go
    // back to the pool still holding the lock, and every later start-up would wait forever.
    let mut conn = pool
        .acquire()
        .await
        .map_err(database(schema, "connecting"))?
        .detach();
    let result = migrate_locked(&mut conn, schema, components).await;
    // Closing ends the session and releases the lock; a failure to close leaves nothing held
    // (the socket is dropped either way) and changes nothing for the caller.
    let _ = conn.close().await;
    result
}

async fn migrate_locked(
    conn: &mut PgConnection,
    schema: &Identifier,
    components: &[&Component],
) -> Result<Vec<Applied>, MigrationError> {
    let quoted = schema.quoted();
    let free: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(lock_key(schema))
        .fetch_one(&mut *conn)
        .await
        .map_err(database(schema, "taking the migration lock"))?;
    if !free {
        // Another worker is migrating: say why the start-up pauses, then wait for it.
        tracing::info!(
            schema = schema.as_str(),
            lock_key = lock_key(schema),
            "waiting for another process to finish migrating this schema"
        );
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(lock_key(schema))
            .execute(&mut *conn)
            .await
            .map_err(database(schema, "waiting for the migration lock"))?;
    }
    let bookkeeping = format!(
        "CREATE SCHEMA IF NOT EXISTS {quoted};
         CREATE TABLE IF NOT EXISTS {quoted}.{TABLE} (
             component   TEXT        NOT NULL,
             version     INT         NOT NULL,
             description TEXT        NOT NULL,
             applied_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
             PRIMARY KEY (component, version)
         )"
    );
    // Through `Executor::execute` (a boxed `Send` future) rather than `RawSql::execute`, whose
    // generic future the compiler cannot prove `Send` for every lifetime, which would make
    // `run` impossible to `tokio::spawn`.
    Executor::execute(&mut *conn, sqlx::raw_sql(&bookkeeping))
        .await
        .map_err(database(
            schema,
            "creating the schema and its migrations table",
        ))?;
    let rows: Vec<(String, i32)> =
        sqlx::query_as(&format!("SELECT component, version FROM {quoted}.{TABLE}"))
            .fetch_all(&mut *conn)
            .await
            .map_err(database(schema, "reading the applied migrations"))?;
    let mut recorded: BTreeMap<String, BTreeSet<i32>> = BTreeMap::new();
    for (component, version) in rows {
        recorded.entry(component).or_default().insert(version);
    }

    // Every component is checked before anything is applied: an older worker must not upgrade
    // one component of a database that a newer one already owns.
    for component in components {
        let newest = recorded
            .get(component.name)
            .and_then(|versions| versions.last().copied());
        if let Some(newest) = newest.filter(|&v| v > component.latest()) {
            return Err(MigrationError::NewerThanCode {
                schema: schema.to_string(),
                component: component.name,
                recorded: newest,
                known: component.latest(),
            });
        }
    }

    let insert = format!(
        "INSERT INTO {quoted}.{TABLE} (component, version, description) VALUES ($1, $2, $3)"
    );
    let mut applied = Vec::new();
    for component in components {
        let done = recorded.get(component.name);
        for migration in component.migrations {
            if done.is_some_and(|versions| versions.contains(&migration.version)) {
                continue;
            }
            apply(conn, schema, &insert, component, migration)
                .await
                .map_err(|source| MigrationError::Failed {
                    schema: schema.to_string(),
                    component: component.name,
                    version: migration.version,
                    description: migration.description,
                    source,
                })?;
            tracing::info!(
                schema = schema.as_str(),
                component = component.name,
                version = migration.version,
                description = migration.description,
                "applied framework migration"
            );
            applied.push(Applied {
                component: component.name,
                version: migration.version,
            });
        }
    }
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(lock_key(schema))
        .execute(&mut *conn)
        .await
        .map_err(database(schema, "releasing the migration lock"))?;
    Ok(applied)
}

/// Runs one migration and records it in the same transaction.
async fn apply(
    conn: &mut PgConnection,
    schema: &Identifier,
    insert: &str,
    component: &Component,
    migration: &Migration,
) -> Result<(), sqlx::Error> {
    let mut tx = conn.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(LEGACY_LOCK_KEY)
        .execute(&mut *tx)
        .await?;
    let sql = migration.sql.replace(SCHEMA_PLACEHOLDER, &schema.quoted());
    Executor::execute(&mut *tx, sqlx::raw_sql(&sql)).await?;
    sqlx::query(insert)
        .bind(component.name)
        .bind(migration.version)
        .bind(migration.description)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// The advisory lock key of `schema`'s migrations: FNV-1a of `worker_schema_migrations:<schema>`.
/// A hash of our own rather than Rust's `DefaultHasher` or Postgres' `hashtext`, whose values may
/// change between releases: workers of different releases must agree on the key. (`pg_locks`
/// shows a held key as `classid` = its high 32 bits, `objid` = its low 32 bits.)
pub fn lock_key(schema: &Identifier) -> i64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0100_0000_01b3;
    let hash = format!("{TABLE}:{schema}")
        .bytes()
        .fold(OFFSET_BASIS, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(PRIME)
        });
    i64::from_be_bytes(hash.to_be_bytes())
}

fn database<'a>(
    schema: &'a Identifier,
    step: &'static str,
) -> impl FnOnce(sqlx::Error) -> MigrationError + 'a {
    move |source| MigrationError::Database {
        schema: schema.to_string(),
        step,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_count_up_from_one_and_name_the_schema() {
        let mut names = BTreeSet::new();
        for component in FRAMEWORK {
            assert!(names.insert(component.name), "{} twice", component.name);
            for (index, migration) in component.migrations.iter().enumerate() {
                let expected = i32::try_from(index + 1).expect("a handful of migrations");
                assert_eq!(migration.version, expected, "{}", component.name);
                assert!(!migration.description.is_empty());
                assert!(
                    migration.sql.contains(SCHEMA_PLACEHOLDER),
                    "{} {} must schema-qualify its tables",
                    component.name,
                    migration.version
                );
            }
            assert!(component.latest() >= 1, "{}", component.name);
        }
    }

    #[test]
    fn the_lock_is_per_schema_and_stable() {
        let a = Identifier::new("orders").expect("identifier");
        let b = Identifier::new("payments").expect("identifier");
        assert_ne!(lock_key(&a), lock_key(&b));
        assert_ne!(lock_key(&a), LEGACY_LOCK_KEY);
        // The key is part of the protocol between releases: it must never change.
        assert_eq!(lock_key(&a), lock_key(&a.clone()));
        assert_eq!(
            lock_key(&a),
            i64::from_be_bytes(fnv1a(b"worker_schema_migrations:orders").to_be_bytes())
        );
    }

    /// Compiles only if the start-up migration can run on a spawned task.
    #[allow(dead_code)]
    fn run_framework_is_spawnable(pool: PgPool, schema: Identifier) {
        drop(tokio::spawn(
            async move { run_framework(&pool, &schema).await },
        ));
    }

    /// FNV-1a written out again from its definition, as a cross-check of `lock_key`.
    fn fnv1a(bytes: &[u8]) -> u64 {
        let mut hash: u64 = 14_695_981_039_346_656_037;
        for &byte in bytes {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(1_099_511_628_211);
        }
        hash
    }
}
