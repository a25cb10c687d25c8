-- Tables of the test handlers (in each test's own schema).
CREATE TABLE attempts (
    id       BIGSERIAL   PRIMARY KEY,
    event_id TEXT        NOT NULL,
    handler  TEXT        NOT NULL,
    attempt  INT         NOT NULL,
    trace_id TEXT        NOT NULL,
    at       TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
CREATE TABLE effects (
    id       BIGSERIAL   PRIMARY KEY,
    event_id TEXT        NOT NULL,
    handler  TEXT        NOT NULL,
    at       TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
