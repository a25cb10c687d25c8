//! The outbox table's migrations, run by [`crate::migrations`] (versioned, under the schema's
//! advisory lock).
//!
//! ```sql
//! CREATE TABLE <schema>.outbox (
//!   id           BIGSERIAL   PRIMARY KEY,          -- publish order
//!   event_id     TEXT        NOT NULL,             -- the message_id to publish
//!   aggregate_id TEXT        NOT NULL,             -- order is kept per aggregate
//!   event_type   TEXT        NOT NULL,             -- the routing key
//!   payload      JSONB       NOT NULL,             -- the body
//!   headers      JSONB       NOT NULL DEFAULT '{}', -- traceparent, tracestate, ...
//!   created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
//!   published_at TIMESTAMPTZ,                      -- NULL until the broker confirmed it
//!   attempts     INT         NOT NULL DEFAULT 0,   -- failed publishes
//!   last_error   TEXT,
//!   next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now()
//! );
//! ```
//!
//! plus a partial index on the unpublished rows (what the relay scans) and a statement trigger
//! that sends `NOTIFY worker_outbox, '<schema>'` when rows are inserted; the notification is
//! delivered at commit, and not at all when the transaction rolls back.

use crate::migrations::{Component, Migration};

/// The channel the insert trigger notifies; the payload is the schema of the table.
pub(crate) const NOTIFY_CHANNEL: &str = "worker_outbox";

/// The `outbox` table's versions. Version 1 is the DDL of the releases before versioned
/// migrations, `IF NOT EXISTS` included, so their databases are adopted.
pub(crate) const COMPONENT: Component = Component {
    name: "outbox",
    migrations: &[Migration {
        version: 1,
        description: "outbox table, its indexes and its notify trigger",
        // The channel is `NOTIFY_CHANNEL` (a test checks it); `'{}'` is an empty JSON object.
        sql: "CREATE TABLE IF NOT EXISTS {schema}.outbox (
                  id              BIGSERIAL   PRIMARY KEY,
                  event_id        TEXT        NOT NULL,
                  aggregate_id    TEXT        NOT NULL,
                  event_type      TEXT        NOT NULL,
                  payload         JSONB       NOT NULL,
                  headers         JSONB       NOT NULL DEFAULT '{}',
                  created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
                  published_at    TIMESTAMPTZ,
                  attempts        INT         NOT NULL DEFAULT 0,
                  last_error      TEXT,
                  next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now()
              );
              CREATE INDEX IF NOT EXISTS outbox_unpublished_idx ON {schema}.outbox (id) WHERE published_at IS NULL;
              CREATE INDEX IF NOT EXISTS outbox_unpublished_aggregate_idx ON {schema}.outbox (aggregate_id, id) WHERE published_at IS NULL;
              CREATE INDEX IF NOT EXISTS outbox_published_at_idx ON {schema}.outbox (published_at) WHERE published_at IS NOT NULL;
              CREATE OR REPLACE FUNCTION {schema}.outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
              BEGIN
                  PERFORM pg_notify('worker_outbox', TG_TABLE_SCHEMA);
                  RETURN NULL;
              END $$;
              -- Created only when missing: a DROP + CREATE would lock the table on every start-up.
              DO $$ BEGIN
                  IF NOT EXISTS (SELECT 1 FROM pg_trigger
                                 WHERE tgname = 'outbox_notify' AND tgrelid = '{schema}.outbox'::regclass) THEN
                      CREATE TRIGGER outbox_notify AFTER INSERT ON {schema}.outbox
                      FOR EACH STATEMENT EXECUTE FUNCTION {schema}.outbox_notify();
                  END IF;
              END $$;",
    }],
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trigger_notifies_the_channel_the_relay_listens_on() {
        let sql = COMPONENT.migrations[0].sql;
        assert!(sql.contains(&format!("pg_notify('{NOTIFY_CHANNEL}', TG_TABLE_SCHEMA)")));
    }
}
