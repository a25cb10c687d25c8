-- The shipping app of the isolation test: one parcel per OrderPlaced (a migration history of
-- its own, unlike the billing app's).
CREATE TABLE parcels (
    event_id TEXT NOT NULL,
    schema_name TEXT NOT NULL
);
