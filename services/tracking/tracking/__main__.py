"""`python3 -m tracking [serve|worker|migrate|healthcheck]`; without a command, TRACKING_MODE's (serve).

serve        the HTTP API on PORT; on SIGTERM it stops accepting, finishes the requests in flight
             (at most TRACKING_GRACEFUL_TIMEOUT seconds) and exits 0
worker       stores the events queued in the Redis stream; on SIGTERM it finishes the event in hand
             and exits 0
migrate      applies the schema's migrations (the release task); safe to run again or twice at once
healthcheck  the image's HEALTHCHECK: the worker's heartbeat when a worker runs here, else GET /healthz
"""

from __future__ import annotations

import logging
import signal
import sys
from types import FrameType

from fdservice import cli, logs

from .config import Mode, Settings

log = logging.getLogger("tracking")

# A worker whose loop has not turned for this long is unhealthy (a turn waits at most 1 s for an
# entry, plus the time one event takes to store).
WORKER_STALE_S = 60


def healthcheck(settings: Settings) -> int:
    from . import heartbeat

    age = heartbeat.age()
    if age is not None:
        return 0 if age < WORKER_STALE_S else 1
    return cli.answers_health(settings.port)


def serve(settings: Settings) -> int:
    from .api import create_app

    return cli.serve(create_app(settings), settings)


def worker(settings: Settings) -> int:
    from .queue import Worker

    running = Worker(settings)

    def stop(signum: int, _frame: FrameType | None) -> None:
        logs.event(log, "stopping after the event in hand", signal=signal.Signals(signum).name)
        running.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    running.run()
    return 0


def migrate(settings: Settings) -> int:
    from .migrate import migrate as apply

    apply(settings.migration_lock_timeout_ms)
    return 0


def main(argv: list[str]) -> int:
    commands = {Mode.SERVE.value: serve, Mode.WORKER.value: worker, "migrate": migrate, cli.HEALTHCHECK: healthcheck}
    return cli.main("tracking", argv, Settings.from_env, commands, lambda settings: settings.mode.value, __doc__ or "")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
