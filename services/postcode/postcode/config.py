"""The service's settings, read once from the environment and validated (README.md lists them); those
every service has (PORT, LOG_LEVEL, REDIS_*, POSTCODE_RELEASE, ...) through fdservice.config."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from fdservice.config import ConfigError, ServiceSettings, integer


@dataclass(frozen=True)
class Settings(ServiceSettings):
    countries: tuple[str, ...]
    cache_ttl: int
    max_results: int

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "Settings":
        common = cls.common(environ, "POSTCODE")
        countries = tuple(c.strip().upper() for c in (environ.get("POSTCODE_COUNTRIES") or "DE,AT,CH").split(",")
                          if c.strip())
        bad = [c for c in countries if not re.fullmatch(r"[A-Z]{2}", c)]
        if bad or not countries:
            raise ConfigError(f"POSTCODE_COUNTRIES must be ISO 3166 alpha-2 codes separated by commas, got {bad}")
        return cls(
            **common,
            countries=countries,
            cache_ttl=integer(environ, "POSTCODE_CACHE_TTL", 300, minimum=1),
            max_results=integer(environ, "POSTCODE_MAX_RESULTS", 50, minimum=1),
        )
