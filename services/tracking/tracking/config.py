"""The service's settings, read once from the environment and validated (README.md lists them); those
every service has (PORT, LOG_LEVEL, REDIS_*, TRACKING_RELEASE, ...) through fdservice.config."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from fdservice.config import ConfigError, ServiceSettings, integer, text


class Mode(StrEnum):
    SERVE = "serve"
    WORKER = "worker"


@dataclass(frozen=True)
class Settings(ServiceSettings):
    mode: Mode
    stream: str
    group: str
    consumer: str
    claim_idle_ms: int
    max_deliveries: int

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "Settings":
        mode = text(environ, "TRACKING_MODE", "serve")
        if mode not in Mode.__members__.values():
            raise ConfigError(f"TRACKING_MODE must be one of {', '.join(Mode)}, got {mode!r}")
        return cls(
            **cls.common(environ, "TRACKING"),
            mode=Mode(mode),
            stream=text(environ, "TRACKING_STREAM", "tracking:events"),
            group=text(environ, "TRACKING_CONSUMER_GROUP", "tracking-workers"),
            consumer=text(environ, "TRACKING_CONSUMER_NAME", socket.gethostname()),
            claim_idle_ms=integer(environ, "TRACKING_CLAIM_IDLE_MS", 60000, minimum=1),
            max_deliveries=integer(environ, "TRACKING_MAX_DELIVERIES", 5, minimum=1),
        )

    @property
    def dead_letter_stream(self) -> str:
        return f"{self.stream}:dead"
