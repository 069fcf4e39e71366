"""`fleetdeploy-console`: serve, create-user, create-token, migrate."""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import sys
from pathlib import Path

from fleetdeploy.console import config as configmod
from fleetdeploy.console.db import migrate
from fleetdeploy.console.security import CLI_PRINCIPAL, ROLES, TOKEN_ROLES


def _load(args: argparse.Namespace) -> configmod.Config:
    path = args.config or os.environ.get("FLEETDEPLOY_CONSOLE_CONFIG")
    try:
        return configmod.load(Path(path) if path else None, database=args.database,
                              data_dir=Path(args.data_dir) if args.data_dir else None)
    except configmod.ConfigError as exc:
        sys.exit(f"fleetdeploy-console: {exc}")


def cmd_migrate(args: argparse.Namespace) -> int:
    cfg = _load(args)
    migrate(cfg.database)
    print(f"database at the newest schema: {cfg.database_shown}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from fleetdeploy.console.domain.console import Console
    from fleetdeploy.console.server import serve
    from fleetdeploy.console.web.factory import create_app

    cfg = _load(args)
    configmod.scrub_environment(cfg)
    cfg.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    migrate(cfg.database)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    console = Console(cfg)
    # Forwarded headers are the app's business (security.trusted_proxies), not uvicorn's.
    serve(create_app(cfg, console), console.stop, host=args.host, port=args.port, proxy_headers=False,
          log_level=args.log_level, access_log=args.access_log)
    return 0


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"Password for {args.name}: ")
        if getpass.getpass("Again: ") != password:
            sys.exit("fleetdeploy-console: the passwords differ")
    return password


def cmd_create_user(args: argparse.Namespace) -> int:
    from fleetdeploy.console.domain.admin import parse_environments
    from fleetdeploy.console.domain.console import Console
    from fleetdeploy.console.domain.errors import ConsoleError

    cfg = _load(args)
    migrate(cfg.database)
    envs = parse_environments(args.environments)
    password = _read_password(args)
    try:
        # The same code as the pages and the API, as an admin of every environment (see CLI_PRINCIPAL).
        Console(cfg).save_user(CLI_PRINCIPAL, args.name, args.role, envs, password, update=args.update)
    except ConsoleError as exc:
        hint = " (use --update to change it)" if exc.status == 409 else ""
        sys.exit(f"fleetdeploy-console: {exc.message}{hint}")
    print(f"user {args.name}: {args.role}{' on ' + ', '.join(envs) if envs else ' on every environment'}"
          f"{'; its sessions were ended' if args.update else ''}")
    return 0


def cmd_create_token(args: argparse.Namespace) -> int:
    from fleetdeploy.console.domain.admin import parse_environments
    from fleetdeploy.console.domain.console import Console
    from fleetdeploy.console.domain.errors import ConsoleError

    cfg = _load(args)
    migrate(cfg.database)
    try:
        _, token = Console(cfg).create_token(CLI_PRINCIPAL, args.name, args.role, parse_environments(args.environments))
    except ConsoleError as exc:
        sys.exit(f"fleetdeploy-console: {exc.message}")
    # The token alone on stdout, so scripts can capture it; it is not shown again.
    print(token)
    return 0


def _name(text: str) -> str:
    """A user's or token's name, refused as a usage error (exit 2) before anything else is read."""
    from fleetdeploy.console.domain.admin import NAME_RULE, valid_name

    if not valid_name(text):
        raise argparse.ArgumentTypeError(NAME_RULE)
    return text


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="console config file (YAML); default $FLEETDEPLOY_CONSOLE_CONFIG or none")
    common.add_argument("--database", help="sqlite:///PATH (default: console.db in the data directory) or "
                                           "postgresql://USER@HOST[:PORT]/NAME; a password belongs in the config "
                                           "file's database_password_file or database_password_env, not here")
    common.add_argument("--data-dir", help="where the database and job run directories live (default .console/)")

    p = argparse.ArgumentParser(prog="fleetdeploy-console", description="The fleetdeploy deploy console")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", parents=[common], help="run the web console (migrates first)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8765)
    s.add_argument("--log-level", default="info")
    s.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=True)
    s.set_defaults(func=cmd_serve)

    u = sub.add_parser("create-user", parents=[common], help="add a user (or change one with --update)")
    u.add_argument("name", type=_name)
    u.add_argument("--role", choices=ROLES, required=True)
    u.add_argument("--environments", help="separated by commas or spaces; default every environment")
    u.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    u.add_argument("--update", action="store_true", help="change an existing user's role, scope and password")
    u.set_defaults(func=cmd_create_user)

    t = sub.add_parser("create-token", parents=[common], help="create an API token and print it once")
    t.add_argument("name", type=_name)
    t.add_argument("--role", choices=TOKEN_ROLES, required=True)
    t.add_argument("--environments", help="separated by commas or spaces; default every environment")
    t.set_defaults(func=cmd_create_token)

    m = sub.add_parser("migrate", parents=[common], help="bring the database to the newest schema")
    m.set_defaults(func=cmd_migrate)
    return p


def main(argv: list[str] | None = None) -> int:
    from sqlalchemy.exc import OperationalError

    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except OperationalError as exc:
        # The driver's own words (no statement, no password): unreachable, refused, no such database...
        reason = str(exc.orig or exc).strip().splitlines()[0]
        sys.exit(f"fleetdeploy-console: cannot use the database {_load(args).database_shown}: {reason}")


if __name__ == "__main__":
    sys.exit(main())
