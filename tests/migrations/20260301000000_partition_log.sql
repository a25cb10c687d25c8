-- The partitioned test handler's log (in each test's own schema): every call, and every commit.
CREATE TABLE partition_calls (
    id       BIGSERIAL PRIMARY KEY,
    key      TEXT      NOT NULL,
    seq      INT       NOT NULL,
    attempt  INT       NOT NULL,
    worker   TEXT      NOT NULL
);
CREATE TABLE partition_applied (
    id       BIGSERIAL PRIMARY KEY,
    key      TEXT      NOT NULL,
    seq      INT       NOT NULL,
    worker   TEXT      NOT NULL
);
