"""The worker's heartbeat file: the worker touches it at every turn of its loop, and the image's
HEALTHCHECK reads its age. Standard library only: Docker runs the HEALTHCHECK every 30 s in every
tracking container, and importing the queue's clients (redis, psycopg) for it cost 230 ms of CPU a run,
the file's age alone about 50."""

from __future__ import annotations

import time
from pathlib import Path

HEARTBEAT = Path("/tmp/tracking-worker.heartbeat")


def age() -> float | None:
    """Seconds since the worker's last turn, None when no worker runs in this container."""
    try:
        return time.time() - HEARTBEAT.stat().st_mtime
    except FileNotFoundError:
        return None
