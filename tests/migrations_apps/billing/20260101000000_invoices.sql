-- The billing app of the isolation test: one invoice per OrderPlaced.
CREATE TABLE invoices (
    event_id TEXT NOT NULL,
    schema_name TEXT NOT NULL
);
