"""The settings every service reads from the environment the same way, validated once at start.

A service's own Settings derives from ServiceSettings and adds its fields; its variables carry the
service's prefix (TRACKING_RELEASE, POSTCODE_DB_POOL_SIZE, ...), the rest are common (PORT, LOG_LEVEL,
REDIS_*). PostgreSQL's connection comes from libpq's own variables (PGHOST, PGPORT, PGDATABASE,
PGUSER, PGPASSWORD, PGSSLMODE, ...), which psycopg reads itself; they are not repeated here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class ConfigError(ValueError):
    """A variable with a value the service cannot use; the message names it."""


def integer(environ: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    """The variable `name` as an integer of at least `minimum`; `default` when unset or blank."""
    raw = environ.get(name, "").strip() or str(default)
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def text(environ: Mapping[str, str], name: str, default: str) -> str:
    """The variable `name` stripped; `default` when unset or blank."""
    return environ.get(name, "").strip() or default


@dataclass(frozen=True)
class ServiceSettings:
    port: int
    release: str
    log_level: str
    redis_url: str
    redis_username: str | None
    redis_password: str | None
    db_pool_size: int
    graceful_timeout: int
    migration_lock_timeout_ms: int

    @staticmethod
    def common(environ: Mapping[str, str], prefix: str) -> dict[str, Any]:
        """The shared fields, as keyword arguments for a service's Settings; `prefix` is its variables'
        (TRACKING for TRACKING_RELEASE)."""
        level = text(environ, "LOG_LEVEL", "INFO").upper()
        if level not in LOG_LEVELS:
            raise ConfigError(f"LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {level!r}")
        redis_url = text(environ, "REDIS_URL", "redis://localhost:6379/0")
        if not redis_url.startswith(("redis://", "rediss://")):
            raise ConfigError(f"REDIS_URL must start with redis:// or rediss://, got {redis_url.split('@')[-1]!r}")
        if "@" in redis_url:
            raise ConfigError("REDIS_URL must not carry credentials: set REDIS_USERNAME and REDIS_PASSWORD")
        return {
            "port": integer(environ, "PORT", 8000, minimum=1),
            "release": environ.get(f"{prefix}_RELEASE", "unknown"),
            "log_level": level,
            "redis_url": redis_url,
            "redis_username": environ.get("REDIS_USERNAME") or None,
            "redis_password": environ.get("REDIS_PASSWORD") or None,
            "db_pool_size": integer(environ, f"{prefix}_DB_POOL_SIZE", 5, minimum=1),
            "graceful_timeout": integer(environ, f"{prefix}_GRACEFUL_TIMEOUT", 25, minimum=1),
            "migration_lock_timeout_ms": integer(environ, f"{prefix}_MIGRATION_LOCK_TIMEOUT_MS", 5000, minimum=1),
        }
