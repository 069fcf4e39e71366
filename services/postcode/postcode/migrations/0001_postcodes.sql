-- The postal codes and what was loaded. Every migration is an expansion (README.md): the release
-- before it keeps working on the schema after it.
-- pg_trgm is a trusted extension (PostgreSQL 13 and later, RDS too): the database's owner may create it.
CREATE EXTENSION IF NOT EXISTS pg_trgm;

CREATE TABLE postcodes (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    country char(2) NOT NULL,
    code text NOT NULL,
    place text NOT NULL,
    state_code text,
    latitude double precision,
    longitude double precision
);

-- Prefix search: LIKE 'abc%' uses a btree built with text_pattern_ops whatever the collation.
CREATE INDEX postcodes_code_prefix ON postcodes (code text_pattern_ops);
-- Place search: similarity (%) and ILIKE both use a trigram GIN index.
CREATE INDEX postcodes_place_trgm ON postcodes USING gin (place gin_trgm_ops);

-- One row per loaded country: which data set and version its rows come from.
CREATE TABLE postcode_datasets (
    country char(2) PRIMARY KEY,
    source text NOT NULL,
    version text NOT NULL,
    row_count integer NOT NULL,
    loaded_at timestamptz NOT NULL DEFAULT now()
);
