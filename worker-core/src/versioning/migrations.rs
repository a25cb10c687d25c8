//! The `entity_versions` table's migrations, run by [`crate::migrations`] (versioned, under the
//! schema's advisory lock):
//!
//! ```sql
//! CREATE TABLE <schema>.entity_versions (
//!   handler    TEXT        NOT NULL,   -- each handler tracks its own progress
//!   entity_id  TEXT        NOT NULL,
//!   version    BIGINT      NOT NULL,   -- the last version applied
//!   applied_at TIMESTAMPTZ NOT NULL DEFAULT now(),
//!   PRIMARY KEY (handler, entity_id)
//! );
//! ```

use crate::migrations::{Component, Migration};

/// The `entity_versions` table's versions. Version 1 is the DDL of the releases before
/// versioned migrations, `IF NOT EXISTS` included, so their databases are adopted.
pub const COMPONENT: Component = Component {
    name: "versioning",
    migrations: &[Migration {
        version: 1,
        description: "entity_versions table",
        sql: "CREATE TABLE IF NOT EXISTS {schema}.entity_versions (
                  handler    TEXT        NOT NULL,
                  entity_id  TEXT        NOT NULL,
                  version    BIGINT      NOT NULL,
                  applied_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                  PRIMARY KEY (handler, entity_id)
              );",
    }],
};
