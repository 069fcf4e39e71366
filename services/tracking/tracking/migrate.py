"""The schema's migrations, applied in order by `python3 -m tracking migrate` (a release task).

Each file of migrations/ (NNNN_name.sql) runs once, in a transaction of its own, and is recorded in
`schema_migrations`; a session advisory lock makes two runs at once take turns, so the second finds
nothing to do. Each transaction waits at most TRACKING_MIGRATION_LOCK_TIMEOUT_MS for a table lock,
so a migration never queues the live traffic behind it for long: it fails and can be run again.
Migrations only expand the schema (README.md, "Migrations"): the release still running keeps working.
"""

from __future__ import annotations

import logging
from importlib import resources

import psycopg

from . import logs

log = logging.getLogger("tracking.migrate")

# pg_advisory_lock's key for this service's migrations ("trak").
LOCK_KEY = 0x7472616B


def migrations() -> list[tuple[str, str]]:
    """(version, SQL) of every migration, in order."""
    folder = resources.files(__package__).joinpath("migrations")
    files = sorted(f for f in folder.iterdir() if f.name.endswith(".sql"))
    return [(f.name.removesuffix(".sql"), f.read_text(encoding="utf-8")) for f in files]


def migrate(lock_timeout_ms: int) -> list[str]:
    """Apply the migrations the database lacks; returns their versions (empty when up to date)."""
    applied: list[str] = []
    with psycopg.connect(autocommit=True, application_name="tracking-migrate") as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations ("
                         "version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
            done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            for version, sql in migrations():
                if version in done:
                    continue
                with conn.transaction():
                    conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{lock_timeout_ms}ms",))
                    conn.execute(sql.encode())
                    conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
                logs.event(log, "migration applied", version=version)
                applied.append(version)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
    if not applied:
        logs.event(log, "schema up to date", versions=len(done))
    return applied
