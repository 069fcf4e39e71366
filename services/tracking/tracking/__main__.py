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
from http.client import HTTPConnection
from types import FrameType

from . import logs
from .config import ConfigError, Mode, Settings

log = logging.getLogger("tracking")

# A worker whose loop has not turned for this long is unhealthy (a turn waits at most 1 s for an
# entry, plus the time one event takes to store).
WORKER_STALE_S = 60


def healthcheck(settings: Settings) -> int:
    from .queue import heartbeat_age

    age = heartbeat_age()
    if age is not None:
        return 0 if age < WORKER_STALE_S else 1
    connection = HTTPConnection("127.0.0.1", settings.port, timeout=3)
    try:
        connection.request("GET", "/healthz")
        return 0 if connection.getresponse().status == 200 else 1
    except OSError:
        return 1
    finally:
        connection.close()


def serve(settings: Settings) -> int:
    import uvicorn

    from .api import create_app

    config = uvicorn.Config(create_app(settings), host="0.0.0.0", port=settings.port, log_config=None,
                            access_log=False, server_header=False, proxy_headers=False,
                            timeout_graceful_shutdown=settings.graceful_timeout)
    uvicorn.Server(config).run()  # installs its own SIGTERM/SIGINT handlers: stop accepting, drain, exit
    return 0


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
    try:
        settings = Settings.from_env()
    except ConfigError as error:
        print(f"tracking: {error}", file=sys.stderr)
        return 2
    command = argv[0] if argv else settings.mode.value
    if command == "healthcheck":
        return healthcheck(settings)
    logs.setup(settings.log_level, settings.release)
    commands = {Mode.SERVE.value: serve, Mode.WORKER.value: worker, "migrate": migrate}
    if command not in commands or len(argv) > 1:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        return commands[command](settings)
    except Exception:
        log.exception("%s failed", command)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
