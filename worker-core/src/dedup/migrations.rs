//! The dedup store's migrations, run by [`crate::migrations`] (versioned, under the schema's
//! advisory lock).
//!
//! ```sql
//! CREATE TABLE <schema>.processed_events (
//!   handler      TEXT        NOT NULL,   -- each handler keeps its own dedup state
//!   event_id     TEXT        NOT NULL,
//!   processed_at TIMESTAMPTZ NOT NULL DEFAULT now(),   -- what the pruning goes by
//!   PRIMARY KEY (handler, event_id)
//! );
//! ```

use crate::migrations::{Component, Migration};

/// The `processed_events` table's versions. Version 1 is the DDL of the releases before
/// versioned migrations, `IF NOT EXISTS` included, so their databases are adopted.
pub(crate) const COMPONENT: Component = Component {
    name: "dedup",
    migrations: &[Migration {
        version: 1,
        description: "processed_events table and its processed_at index",
        sql: "CREATE TABLE IF NOT EXISTS {schema}.processed_events (
                  handler      TEXT        NOT NULL,
                  event_id     TEXT        NOT NULL,
                  processed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                  PRIMARY KEY (handler, event_id)
              );
              CREATE INDEX IF NOT EXISTS processed_events_processed_at_idx ON {schema}.processed_events (processed_at);",
    }],
};
