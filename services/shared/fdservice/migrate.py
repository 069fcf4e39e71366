"""A service's schema migrations, applied in order by `python3 -m <service> migrate` (a release task).

Each file of the service package's migrations/ (NNNN_name.sql) runs once, in a transaction of its own,
and is recorded in `schema_migrations`; a session advisory lock (the service's own key) makes two runs
at once take turns, so the second finds nothing to do. Each transaction waits at most the service's
<PREFIX>_MIGRATION_LOCK_TIMEOUT_MS for a table lock, so a migration never queues the live traffic
behind it for long: it fails and can be run again. Migrations only expand the schema (each service's
README.md, "Migrations"): the release still running keeps working.
"""

from __future__ import annotations

import logging
from importlib import resources

import psycopg

from . import logs


def migrations(package: str) -> list[tuple[str, str]]:
    """(version, SQL) of every migration in `package`'s migrations/ folder, in order."""
    folder = resources.files(package).joinpath("migrations")
    files = sorted(f for f in folder.iterdir() if f.name.endswith(".sql"))
    return [(f.name.removesuffix(".sql"), f.read_text(encoding="utf-8")) for f in files]


def migrate(package: str, lock_key: int, lock_timeout_ms: int, application_name: str) -> list[str]:
    """Apply the migrations of `package` the database lacks, under pg_advisory_lock(`lock_key`); returns
    their versions (empty when up to date). Logged as `<package>.migrate`."""
    log = logging.getLogger(f"{package}.migrate")
    applied: list[str] = []
    with psycopg.connect(autocommit=True, application_name=application_name) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (lock_key,))
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations ("
                         "version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
            done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            for version, sql in migrations(package):
                if version in done:
                    continue
                with conn.transaction():
                    conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{lock_timeout_ms}ms",))
                    conn.execute(sql.encode())
                    conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
                logs.event(log, "migration applied", version=version)
                applied.append(version)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (lock_key,))
    if not applied:
        logs.event(log, "schema up to date", versions=len(done))
    return applied
