"""`python3 -m <service> <command>`: the command line every service image runs, and the commands that
are the same in each (serve the API, the HEALTHCHECK's GET /healthz)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Mapping
from http.client import HTTPConnection
from typing import TYPE_CHECKING, TypeVar

from . import logs
from .config import ConfigError, ServiceSettings

if TYPE_CHECKING:
    from fastapi import FastAPI

S = TypeVar("S", bound=ServiceSettings)

# Runs before logging is set up, and prints nothing: its exit code is all Docker reads.
HEALTHCHECK = "healthcheck"


def main(service: str, argv: list[str], settings_from_env: Callable[[], S], commands: Mapping[str, Callable[[S], int]],
         default: Callable[[S], str], usage: str) -> int:
    """Read the settings, pick the command (argv[0], else `default(settings)`) and run it; its exit code.
    2 for a setting or a command line the service cannot use, 1 when the command failed (logged)."""
    try:
        settings = settings_from_env()
    except ConfigError as error:
        print(f"{service}: {error}", file=sys.stderr)
        return 2
    command = argv[0] if argv else default(settings)
    if command == HEALTHCHECK:
        return commands[HEALTHCHECK](settings)
    logs.setup(service, settings.log_level, settings.release)
    if command not in commands or len(argv) > 1:
        print(usage, file=sys.stderr)
        return 2
    try:
        return commands[command](settings)
    except Exception:
        logging.getLogger(service).exception("%s failed", command)
        return 1


def answers_health(port: int, path: str = "/healthz") -> int:
    """0 when the API in this container answers GET `path` with 200, else 1 (the image's HEALTHCHECK)."""
    connection = HTTPConnection("127.0.0.1", port, timeout=3)
    try:
        connection.request("GET", path)
        return 0 if connection.getresponse().status == 200 else 1
    except OSError:
        return 1
    finally:
        connection.close()


# How long an idle keep-alive connection stays open. nginx keeps its idle upstream connections for 60 s
# (keepalive_timeout's default) and reuses them; a server that closes one sooner (uvicorn's default is 5 s)
# can close it just as nginx sends a request on it, and a POST, which nginx does not retry, fails with a
# 502 ("Connection reset by peer while reading response header"). Seen once in the suite under load.
KEEP_ALIVE_SECONDS = 75


def serve(app: FastAPI, settings: ServiceSettings) -> int:
    """The API on settings.port. On SIGTERM uvicorn stops accepting, lets the requests in flight finish
    (at most settings.graceful_timeout seconds), then returns."""
    import uvicorn

    config = uvicorn.Config(app, host="0.0.0.0", port=settings.port, log_config=None,
                            access_log=False, server_header=False, proxy_headers=False,
                            timeout_keep_alive=KEEP_ALIVE_SECONDS,
                            timeout_graceful_shutdown=settings.graceful_timeout)
    uvicorn.Server(config).run()  # installs its own SIGTERM/SIGINT handlers: stop accepting, drain, exit
    return 0
