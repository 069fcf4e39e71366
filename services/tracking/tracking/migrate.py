"""The schema's migrations (migrations/NNNN_name.sql), applied by `python3 -m tracking migrate` (the
release task) through fdservice.migrate: once each, under this service's advisory lock, each waiting at
most TRACKING_MIGRATION_LOCK_TIMEOUT_MS for a table lock. They only expand the schema (README.md,
"Migrations")."""

from __future__ import annotations

from fdservice import migrate as runner

# pg_advisory_lock's key for this service's migrations ("trak").
LOCK_KEY = 0x7472616B


def migrate(lock_timeout_ms: int) -> list[str]:
    """Apply the migrations the database lacks; returns their versions (empty when up to date)."""
    return runner.migrate("tracking", LOCK_KEY, lock_timeout_ms, "tracking-migrate")
