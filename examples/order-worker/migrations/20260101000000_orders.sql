-- The order worker's own tables. They live in the worker's schema (WORKER_DB_SCHEMA), which is
-- first on the search_path of the worker's connections.

-- One row per charge made. Deliberately no unique key on event_id: if an event were ever
-- charged twice, it would show here as two rows (the tests count them).
CREATE TABLE charges (
    id         BIGSERIAL   PRIMARY KEY,
    event_id   TEXT        NOT NULL,
    order_id   TEXT        NOT NULL,
    user_id    TEXT        NOT NULL,
    amount     BIGINT      NOT NULL,
    charged_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX charges_order_id_idx ON charges (order_id);

CREATE TABLE orders (
    order_id TEXT        PRIMARY KEY,
    user_id  TEXT        NOT NULL,
    amount   BIGINT      NOT NULL,
    paid     BOOLEAN     NOT NULL DEFAULT false,
    paid_at  TIMESTAMPTZ
);

-- One row per receipt e-mail "sent" (send-receipt has no dedup: one per delivery it receives).
CREATE TABLE receipts (
    id       BIGSERIAL   PRIMARY KEY,
    event_id TEXT        NOT NULL,
    order_id TEXT        NOT NULL,
    user_id  TEXT        NOT NULL,
    sent_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
