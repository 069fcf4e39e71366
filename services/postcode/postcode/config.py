"""The service's settings, read once from the environment and validated (README.md lists them).

PostgreSQL's connection comes from libpq's own variables (PGHOST, PGPORT, PGDATABASE, PGUSER,
PGPASSWORD, PGSSLMODE, ...), which psycopg reads itself; they are not repeated here.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass


class ConfigError(ValueError):
    """A variable with a value the service cannot use; the message names it."""


def _int(environ: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = environ.get(name, "").strip() or str(default)
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


@dataclass(frozen=True)
class Settings:
    port: int
    release: str
    log_level: str
    redis_url: str
    redis_username: str | None
    redis_password: str | None
    countries: tuple[str, ...]
    cache_ttl: int
    max_results: int
    db_pool_size: int
    graceful_timeout: int
    migration_lock_timeout_ms: int

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "Settings":
        level = (environ.get("LOG_LEVEL", "").strip() or "INFO").upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError(f"LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {level!r}")
        redis_url = environ.get("REDIS_URL", "").strip() or "redis://localhost:6379/0"
        if not redis_url.startswith(("redis://", "rediss://")):
            raise ConfigError(f"REDIS_URL must start with redis:// or rediss://, got {redis_url.split('@')[-1]!r}")
        if "@" in redis_url:
            raise ConfigError("REDIS_URL must not carry credentials: set REDIS_USERNAME and REDIS_PASSWORD")
        countries = tuple(c.strip().upper() for c in (environ.get("POSTCODE_COUNTRIES") or "DE,AT,CH").split(",")
                          if c.strip())
        bad = [c for c in countries if not re.fullmatch(r"[A-Z]{2}", c)]
        if bad or not countries:
            raise ConfigError(f"POSTCODE_COUNTRIES must be ISO 3166 alpha-2 codes separated by commas, got {bad}")
        return cls(
            port=_int(environ, "PORT", 8000, minimum=1),
            release=environ.get("POSTCODE_RELEASE", "unknown"),
            log_level=level,
            redis_url=redis_url,
            redis_username=environ.get("REDIS_USERNAME") or None,
            redis_password=environ.get("REDIS_PASSWORD") or None,
            countries=countries,
            cache_ttl=_int(environ, "POSTCODE_CACHE_TTL", 300, minimum=1),
            max_results=_int(environ, "POSTCODE_MAX_RESULTS", 50, minimum=1),
            db_pool_size=_int(environ, "POSTCODE_DB_POOL_SIZE", 5, minimum=1),
            graceful_timeout=_int(environ, "POSTCODE_GRACEFUL_TIMEOUT", 25, minimum=1),
            migration_lock_timeout_ms=_int(environ, "POSTCODE_MIGRATION_LOCK_TIMEOUT_MS", 5000, minimum=1),
        )
