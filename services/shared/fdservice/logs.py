"""JSON logs on stdout: one object a line, with the service, its release and the fields of the event."""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any


class JsonFormatter(logging.Formatter):
    """A record as one JSON object; `event()`'s fields become keys of their own."""

    def __init__(self, service: str, release: str) -> None:
        super().__init__()
        self.service = service
        self.release = release

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self.service,
            "release": self.release,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup(service: str, level: str, release: str) -> None:
    """Every logger, uvicorn's included, writes JSON to stdout; uvicorn's own access log is off (the
    app logs each request itself, with its duration: fdservice.api)."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(service, release))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True


def event(logger: logging.Logger, msg: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log `msg` with `fields` as keys of the JSON line."""
    logger.log(level, msg, extra={"fields": fields})
