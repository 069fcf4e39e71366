"""The schema's migrations (migrations/NNNN_name.sql), applied by `python3 -m postcode migrate` and
before each `load` (the release task) through fdservice.migrate: once each, under this service's
advisory lock, each waiting at most POSTCODE_MIGRATION_LOCK_TIMEOUT_MS for a table lock. They only
expand the schema (README.md, "Migrations")."""

from __future__ import annotations

from fdservice import migrate as runner

# pg_advisory_lock's key for this service's migrations ("pstc").
LOCK_KEY = 0x70737463


def migrate(lock_timeout_ms: int) -> list[str]:
    """Apply the migrations the database lacks; returns their versions (empty when up to date)."""
    return runner.migrate("postcode", LOCK_KEY, lock_timeout_ms, "postcode-migrate")
