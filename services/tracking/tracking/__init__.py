"""The delivery-tracking service: parcels and their tracking events in PostgreSQL, an HTTP API, and a
worker that stores the events queued in a Redis stream. `python3 -m tracking --help` lists its commands."""
