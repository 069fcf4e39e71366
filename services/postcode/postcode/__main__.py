"""`python3 -m postcode [serve|load|migrate|healthcheck]`; without a command, serve.

serve        the HTTP API on PORT; on SIGTERM it stops accepting, finishes the requests in flight
             (at most POSTCODE_GRACEFUL_TIMEOUT seconds) and exits 0
load         the release task: applies the migrations, then loads POSTCODE_COUNTRIES from the data
             set unless this version of it is loaded already; safe to run again or twice at once
migrate      applies the schema's migrations only
healthcheck  the image's HEALTHCHECK: GET /healthz
"""

from __future__ import annotations

import sys

from fdservice import cli

from .config import Settings


def serve(settings: Settings) -> int:
    from .api import create_app

    return cli.serve(create_app(settings), settings)


def migrate(settings: Settings) -> int:
    from .migrate import migrate as apply

    apply(settings.migration_lock_timeout_ms)
    return 0


def load(settings: Settings) -> int:
    from .dataset import load as load_data

    migrate(settings)
    load_data(settings.countries, settings.migration_lock_timeout_ms)
    return 0


def healthcheck(settings: Settings) -> int:
    return cli.answers_health(settings.port)


def main(argv: list[str]) -> int:
    commands = {"serve": serve, "load": load, "migrate": migrate, cli.HEALTHCHECK: healthcheck}
    return cli.main("postcode", argv, Settings.from_env, commands, lambda _settings: "serve", __doc__ or "")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
