-- Issue 6: charge-on-order-placed emits OrderPaid through the transactional outbox; ship-order
-- consumes it. Each paid order gets a version (bumped on every payment) that ship-order checks,
-- so a late, older OrderPaid never overwrites a newer shipment.

ALTER TABLE orders ADD COLUMN version BIGINT NOT NULL DEFAULT 0;

-- One row per order to ship; `version` is the order version the row reflects.
CREATE TABLE shipments (
    order_id   TEXT        PRIMARY KEY,
    user_id    TEXT        NOT NULL,
    event_id   TEXT        NOT NULL,
    version    BIGINT      NOT NULL,
    status     TEXT        NOT NULL DEFAULT 'ready',
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
