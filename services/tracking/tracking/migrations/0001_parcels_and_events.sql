-- Parcels and their tracking events. Every migration is an expansion (docs in README.md): the
-- release before it keeps working on the schema after it.
CREATE TABLE parcels (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    code text NOT NULL UNIQUE,
    recipient text,
    destination_postcode text,
    status text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE tracking_events (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id uuid NOT NULL UNIQUE,
    parcel_id bigint NOT NULL REFERENCES parcels (id) ON DELETE CASCADE,
    status text NOT NULL,
    location text,
    occurred_at timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX tracking_events_parcel_time ON tracking_events (parcel_id, occurred_at, id);
