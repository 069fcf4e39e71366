"""The console's configuration file: environments are inventories, actions are playbooks."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from fleetdeploy.console.schedule import Cron, CronError, Schedule

REPO = Path(__file__).resolve().parents[2]

# Docker's own rule for a tag: the release and every per-service override must match it.
TAG_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"
# A service name in deploy_services (and so a key of deploy_release_overrides).
SERVICE_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
# Largest batch a deployer may ask for: the inventory's deploy_serial is the normal choice.
MAX_SERIAL = 100
_SERIAL_STEP: dict[str, Any] = {"oneOf": [
    {"type": "integer", "minimum": 1, "maximum": MAX_SERIAL},
    {"type": "string", "pattern": "^(100|[1-9][0-9]?)%$"},
]}

# What a deployer may choose for the built-in deploy and rollback, and nothing else: the registry,
# the services (image, volumes, ports), auto-rollback, the actor and every other inventory setting
# stay the inventory's. A closed schema (additionalProperties: false) is the whole point.
ROLL_EXTRA_VARS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "release": {"type": "string", "pattern": TAG_PATTERN},
        "deploy_release_overrides": {
            "type": "object",
            "description": "Another tag for some services: service name, tag",
            "maxProperties": 64,
            "propertyNames": {"pattern": SERVICE_PATTERN},
            "additionalProperties": {"type": "string", "pattern": TAG_PATTERN},
        },
        "deploy_serial": {
            "description": f"Batch size: 1-{MAX_SERIAL}, a percentage (50%) or a ramp [1, 25%, 100%]; "
                           "empty keeps the inventory's",
            "oneOf": [
                *_SERIAL_STEP["oneOf"],
                {"type": "array", "minItems": 1, "maxItems": 10, "items": _SERIAL_STEP},
            ],
        },
        "deploy_note": {"type": "string", "maxLength": 500, "description": "Kept with the job"},
    },
}

# The three actions every fleetdeploy checkout has; the config file may override or add to them.
DEFAULT_ACTIONS: dict[str, dict[str, Any]] = {
    "deploy": {
        "playbook": "deploy.yml",
        "description": "Roll a release across the fleet, batch by batch",
        "release": {"variable": "release", "repository": None},
        "extra_vars_schema": ROLL_EXTRA_VARS_SCHEMA,
    },
    "rollback": {
        "playbook": "rollback.yml",
        "description": "Put the previous release back",
        "release": {"variable": "release", "repository": None, "required": False},
        "extra_vars_schema": ROLL_EXTRA_VARS_SCHEMA,
    },
    # An admin's action, but a scoped admin is still no owner of the inventory: no extra vars at all.
    "provision": {"playbook": "site.yml", "description": "Converge every host to its roles",
                  "extra_vars_schema": {"type": "object", "additionalProperties": False}},
}


# What a launch may ask of ansible-playbook beyond its extra vars, where the action's `allow` lists it:
# `limit` a host pattern (--limit), `check` a dry run (--check), `diff` the changes shown (--diff).
LAUNCH_OPTIONS = ("limit", "check", "diff")


class ConfigError(ValueError):
    """The configuration file is wrong; the message says where."""


# How long a launch may wait for its approval, at most: a week.
MAX_APPROVAL_MINUTES = 7 * 24 * 60


@dataclass(frozen=True)
class Environment:
    name: str
    inventory: Path
    description: str = ""
    # The actions whose launches wait for a second person's approval here (none: every launch starts at
    # once), and how long such a launch may wait before it expires.
    approval_actions: tuple[str, ...] = ()
    approval_timeout_minutes: float = 60.0
    # The actions launched here by themselves, at the minutes of a cron expression (console/schedule.py).
    schedules: tuple[Schedule, ...] = ()

    def needs_approval(self, action: str) -> bool:
        return action in self.approval_actions


@dataclass(frozen=True)
class ReleaseSpec:
    """How an action takes a release: the extra var it lands in, the registry repository it comes from."""

    variable: str = "release"
    repository: str | None = None
    required: bool = True


@dataclass(frozen=True)
class Action:
    name: str
    playbook: Path
    description: str = ""
    release: ReleaseSpec | None = None
    # The service whose release this action changes, shown per host on the dashboard.
    service: str | None = None
    extra_vars_schema: dict[str, Any] = field(default_factory=lambda: {"type": "object"})
    # The least role that may launch it: deploy and rollback are a deployer's job, the rest an admin's.
    role: str = "admin"
    # The LAUNCH_OPTIONS a launch may set; none unless the config file says so.
    allow: tuple[str, ...] = ()


@dataclass(frozen=True)
class RegistryConfig:
    url: str
    username: str | None = None
    password_env: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None
    timeout: float = 5.0
    # Read from password_env when the config is loaded: `serve` then drops the variable from its environment.
    password_value: str | None = field(default=None, repr=False)

    def password(self) -> str | None:
        if self.password_value is not None:
            return self.password_value
        if self.password_file:
            return self.password_file.read_text().strip()
        return None


@dataclass(frozen=True)
class Config:
    project_dir: Path
    data_dir: Path
    # The SQLAlchemy URL the console connects with, password included: show database_shown instead.
    database: str = field(repr=False)
    environments: dict[str, Environment]
    actions: dict[str, Action]
    database_password_env: str | None = None
    vault_password_file: Path | None = None
    vault_password_env: str | None = None
    vault_password_value: str | None = field(default=None, repr=False)
    registry: RegistryConfig | None = None
    webhook_url: str | None = None
    retention_days: int = 30
    retention_jobs: int = 500
    # "auto" marks cookies Secure when the request arrived over TLS (directly or via the proxy).
    secure_cookies: str = "auto"
    session_hours: float = 12.0
    # Extra literal strings to scrub from everything stored and served (on top of decrypted vault values).
    redact_values: tuple[str, ...] = ()
    ansible_config: Path | None = None
    envvars: dict[str, str] = field(default_factory=dict)
    max_body_bytes: int = 64 * 1024
    login_attempts: int = 5
    login_window_seconds: int = 300
    # Addresses (or CIDRs) whose X-Forwarded-For and X-Forwarded-Proto are believed: the console
    # role's nginx on the same host. Any other client's forwarded headers are ignored.
    trusted_proxies: tuple[str, ...] = ("127.0.0.1",)

    @property
    def runs_dir(self) -> Path:
        return self.data_dir / "runs"

    @property
    def database_shown(self) -> str:
        return shown_database(self.database)


_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "project_dir": {"type": "string"},
        "data_dir": {"type": "string"},
        "database": {"type": "string"},
        "database_password_file": {"type": "string"},
        "database_password_env": {"type": "string"},
        "ansible_config": {"type": "string"},
        "envvars": {"type": "object", "additionalProperties": {"type": "string"}},
        "vault": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"password_file": {"type": "string"}, "password_env": {"type": "string"}},
        },
        "registry": {
            "type": "object",
            "additionalProperties": False,
            "required": ["url"],
            "properties": {
                "url": {"type": "string"},
                "username": {"type": "string"},
                "password_env": {"type": "string"},
                "password_file": {"type": "string"},
                "ca_file": {"type": "string"},
                "timeout": {"type": "number"},
            },
        },
        # Names and services are stored in 64-character columns (PostgreSQL holds the console to that).
        "environments": {
            "type": "object",
            "propertyNames": {"minLength": 1, "maxLength": 64},
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "required": ["inventory"],
                "properties": {
                    "inventory": {"type": "string"},
                    "description": {"type": "string"},
                    # A launch of these actions waits until another person approves it (every action when
                    # `actions` is left out), and expires after `timeout_minutes` (60 by default).
                    "approval": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "actions": {"type": "array", "minItems": 1, "uniqueItems": True,
                                        "items": {"type": "string", "minLength": 1}},
                            "timeout_minutes": {"type": "number", "exclusiveMinimum": 0,
                                                "maximum": MAX_APPROVAL_MINUTES},
                        },
                    },
                    # Actions launched by themselves at the minutes (UTC) of `cron`, as an admin of this
                    # environment: release and extra_vars as a launch gives them.
                    "schedules": {
                        "type": "array",
                        "maxItems": 50,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["name", "action", "cron"],
                            "properties": {
                                "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,47}$"},
                                "action": {"type": "string", "minLength": 1},
                                "cron": {"type": "string"},
                                "release": {"type": "string"},
                                "extra_vars": {"type": "object"},
                            },
                        },
                    },
                },
            },
        },
        "actions": {
            "type": "object",
            "propertyNames": {"minLength": 1, "maxLength": 64},
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "required": ["playbook"],
                "properties": {
                    "playbook": {"type": "string"},
                    "description": {"type": "string"},
                    "service": {"type": "string", "maxLength": 64},
                    "release": {
                        "type": ["object", "null"],
                        "additionalProperties": False,
                        "properties": {
                            "variable": {"type": "string"},
                            "repository": {"type": ["string", "null"]},
                            "required": {"type": "boolean"},
                        },
                    },
                    "extra_vars_schema": {"type": "object"},
                    "role": {"enum": ["deployer", "admin"]},
                    "allow": {"type": "array", "uniqueItems": True, "items": {"enum": list(LAUNCH_OPTIONS)}},
                },
            },
        },
        "notifications": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"webhook_url": {"type": "string"}},
        },
        "retention": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"days": {"type": "integer", "minimum": 1}, "jobs": {"type": "integer", "minimum": 1}},
        },
        "security": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "secure_cookies": {"enum": ["auto", "always", "never"]},
                "session_hours": {"type": "number", "exclusiveMinimum": 0},
                "redact_values_env": {"type": "array", "items": {"type": "string"}},
                "max_body_bytes": {"type": "integer", "minimum": 1024},
                "login_attempts": {"type": "integer", "minimum": 1},
                "login_window_seconds": {"type": "integer", "minimum": 1},
                "trusted_proxies": {"type": "array", "items": {"type": "string", "minLength": 1}},
            },
        },
    },
}


DATABASE_FORMS = "sqlite:///PATH or postgresql://USER@HOST[:PORT]/NAME"


def database_url(url: str, password: str | None = None) -> str:
    """The URL the console connects with: SQLite, or PostgreSQL through psycopg 3 (the driver it ships with).

    `postgresql://` and `postgres://` mean psycopg; a password from a file or variable goes into the
    URL here, so it never has to be on a command line.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        # The URL itself stays out of the message: it may hold a password.
        raise ConfigError(f"database: not a database URL; use {DATABASE_FORMS}") from None
    if parsed.drivername in ("sqlite", "sqlite+pysqlite"):
        if password is not None:
            raise ConfigError("database_password_file/database_password_env: a SQLite database takes no password")
        return url
    if parsed.drivername not in ("postgresql", "postgres", "postgresql+psycopg"):
        raise ConfigError(f"database: {parsed.drivername} is not supported; use {DATABASE_FORMS}")
    parsed = parsed.set(drivername="postgresql+psycopg")
    if password is not None:
        parsed = parsed.set(password=password)
    return parsed.render_as_string(hide_password=False)


def shown_database(url: str) -> str:
    """The database URL with its password masked: what messages, logs and job markers use."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _database_password(path: Path | None, name: str | None) -> str | None:
    if path is not None and name is not None:
        raise ConfigError("database_password_file and database_password_env: give one of them, not both")
    if path is not None:
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"database_password_file: {exc}") from exc
    if name is not None:
        if name not in os.environ:
            raise ConfigError(f"database_password_env: the variable {name} is not set")
        return os.environ[name]
    return None


def default_data_dir() -> Path:
    return Path(os.environ.get("FLEETDEPLOY_CONSOLE_DATA", REPO / ".console"))


def load(path: Path | None, database: str | None = None, data_dir: Path | None = None) -> Config:
    """Read the config file (YAML); with no file, the checkout's own inventories and the three actions."""
    raw: dict[str, Any] = {}
    base = REPO
    if path is not None:
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        try:
            jsonschema.validate(raw, _SCHEMA)
        except jsonschema.ValidationError as exc:
            where = "/".join(str(p) for p in exc.absolute_path) or "top level"
            raise ConfigError(f"{path}: {where}: {exc.message}") from exc
        base = path.resolve().parent

    def resolve(value: str, root: Path) -> Path:
        p = Path(os.path.expanduser(value))
        return p if p.is_absolute() else (root / p).resolve()

    project_dir = resolve(raw["project_dir"], base) if "project_dir" in raw else REPO
    data = data_dir or (resolve(raw["data_dir"], base) if "data_dir" in raw else default_data_dir())
    password_file = resolve(raw["database_password_file"], base) if "database_password_file" in raw else None
    db = database_url(database or raw.get("database") or f"sqlite:///{data / 'console.db'}",
                      _database_password(password_file, raw.get("database_password_env")))

    if "environments" in raw:
        environments = {
            name: Environment(name, resolve(env["inventory"], project_dir), env.get("description", ""))
            for name, env in raw["environments"].items()
        }
    else:
        inv_root = project_dir / "inventories"
        environments = {
            d.name: Environment(d.name, d)
            for d in sorted(inv_root.iterdir() if inv_root.is_dir() else [])
            if d.is_dir()
        }

    merged = {**DEFAULT_ACTIONS, **raw.get("actions", {})} if "actions" not in raw else raw["actions"]
    actions: dict[str, Action] = {}
    for name, spec in merged.items():
        release = spec.get("release")
        schema = spec.get("extra_vars_schema", {"type": "object"})
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise ConfigError(f"action {name}: extra_vars_schema: {exc.message}") from exc
        actions[name] = Action(
            name=name,
            playbook=resolve(spec["playbook"], project_dir),
            description=spec.get("description", ""),
            release=ReleaseSpec(**release) if release is not None else None,
            service=spec.get("service"),
            extra_vars_schema=schema,
            role=spec.get("role", "deployer" if name in ("deploy", "rollback") else "admin"),
            allow=tuple(o for o in LAUNCH_OPTIONS if o in spec.get("allow", ())),
        )

    for name, env in raw.get("environments", {}).items():
        schedules = []
        for index, entry in enumerate(env.get("schedules", [])):
            where = f"environments/{name}/schedules/{index}"
            if entry["action"] not in actions:
                raise ConfigError(f"{where}/action: unknown action {entry['action']!r} (known: {', '.join(actions)})")
            try:
                cron = Cron.parse(entry["cron"])
            except CronError as exc:
                raise ConfigError(f"{where}/cron: {exc}") from exc
            schedule = Schedule(entry["name"], name, entry["action"], cron, entry.get("release"),
                                entry.get("extra_vars", {}))
            if len(schedule.actor) > 64:  # the jobs' and audit entries' column
                raise ConfigError(f"{where}/name: {schedule.actor} is over 64 characters; shorten the name")
            schedules.append(schedule)
        names = [s.name for s in schedules]
        if len(set(names)) != len(names):
            raise ConfigError(f"environments/{name}/schedules: two schedules have one name")
        environments[name] = replace(environments[name], schedules=tuple(schedules))
        if "approval" not in env:
            continue
        needing = env["approval"].get("actions", list(actions))
        unknown = [a for a in needing if a not in actions]
        if unknown:
            raise ConfigError(f"environments/{name}/approval/actions: unknown action(s) {', '.join(unknown)} "
                              f"(known: {', '.join(actions)})")
        environments[name] = replace(environments[name], approval_actions=tuple(needing),
                                     approval_timeout_minutes=float(env["approval"].get("timeout_minutes", 60)))

    registry = None
    if "registry" in raw:
        r = raw["registry"]
        registry = RegistryConfig(
            url=r["url"].rstrip("/"),
            username=r.get("username"),
            password_env=r.get("password_env"),
            password_file=resolve(r["password_file"], base) if "password_file" in r else None,
            ca_file=resolve(r["ca_file"], project_dir) if "ca_file" in r else None,
            timeout=float(r.get("timeout", 5.0)),
            password_value=os.environ.get(r["password_env"]) if "password_env" in r else None,
        )

    vault = raw.get("vault", {})
    security = raw.get("security", {})
    retention = raw.get("retention", {})
    redact = tuple(v for name in security.get("redact_values_env", []) if (v := os.environ.get(name)))
    return Config(
        project_dir=project_dir,
        data_dir=data,
        database=db,
        database_password_env=raw.get("database_password_env"),
        environments=environments,
        actions=actions,
        vault_password_file=resolve(vault["password_file"], base) if "password_file" in vault else None,
        vault_password_env=vault.get("password_env"),
        vault_password_value=os.environ.get(vault["password_env"]) if "password_env" in vault else None,
        registry=registry,
        webhook_url=raw.get("notifications", {}).get("webhook_url"),
        retention_days=retention.get("days", 30),
        retention_jobs=retention.get("jobs", 500),
        secure_cookies=security.get("secure_cookies", "auto"),
        session_hours=float(security.get("session_hours", 12)),
        redact_values=redact,
        ansible_config=resolve(raw["ansible_config"], base) if "ansible_config" in raw else (
            project_dir / "ansible.cfg" if (project_dir / "ansible.cfg").is_file() else None
        ),
        envvars=dict(raw.get("envvars", {})),
        max_body_bytes=security.get("max_body_bytes", 64 * 1024),
        login_attempts=security.get("login_attempts", 5),
        login_window_seconds=security.get("login_window_seconds", 300),
        trusted_proxies=_trusted_proxies(security.get("trusted_proxies", ["127.0.0.1"])),
    )


def _trusted_proxies(values: list[str]) -> tuple[str, ...]:
    import ipaddress

    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ConfigError(f"security/trusted_proxies: {value!r} is not an IP address or network") from None
    return tuple(values)


def scrub_environment(config: Config) -> None:
    """Drop the secret-bearing variables from this process's environment once their values are read.

    ansible-runner starts each playbook with a copy of the console's environment: a secret left there
    would reach every Ansible process, /proc/<pid>/environ and runner's artifacts.
    """
    names = [config.vault_password_env, config.registry.password_env if config.registry else None,
             config.database_password_env]
    for name in names:
        if name:
            os.environ.pop(name, None)
