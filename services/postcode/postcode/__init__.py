"""The postal-code search service: postal codes of a real data set in PostgreSQL, searched by code
prefix and by place name (pg_trgm), answers cached in Redis. `python3 -m postcode --help` lists its commands."""
