"""`python3 -m postcode [serve|load|migrate|healthcheck]`; without a command, serve.

serve        the HTTP API on PORT; on SIGTERM it stops accepting, finishes the requests in flight
             (at most POSTCODE_GRACEFUL_TIMEOUT seconds) and exits 0
load         the release task: applies the migrations, then loads POSTCODE_COUNTRIES from the data
             set unless this version of it is loaded already; safe to run again or twice at once
migrate      applies the schema's migrations only
healthcheck  the image's HEALTHCHECK: GET /healthz
"""

from __future__ import annotations

import logging
import sys
from http.client import HTTPConnection

from . import logs
from .config import ConfigError, Settings

log = logging.getLogger("postcode")


def healthcheck(settings: Settings) -> int:
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


def migrate(settings: Settings) -> int:
    from .migrate import migrate as apply

    apply(settings.migration_lock_timeout_ms)
    return 0


def load(settings: Settings) -> int:
    from .dataset import load as load_data

    migrate(settings)
    load_data(settings.countries, settings.migration_lock_timeout_ms)
    return 0


def main(argv: list[str]) -> int:
    try:
        settings = Settings.from_env()
    except ConfigError as error:
        print(f"postcode: {error}", file=sys.stderr)
        return 2
    command = argv[0] if argv else "serve"
    if command == "healthcheck":
        return healthcheck(settings)
    logs.setup(settings.log_level, settings.release)
    commands = {"serve": serve, "load": load, "migrate": migrate}
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
