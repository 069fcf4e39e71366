"""The console's configuration file: environments are inventories, actions are playbooks.

ConfigFile and its sections type the file as written, and check it once, when load() reads it (pydantic,
strict: unknown keys and values of the wrong type are refused, each named by its place in the file);
load() then resolves it into a Config: paths made absolute, secrets read, defaults filled in.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import jsonschema
import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

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

# What a launch may ask of ansible-playbook beyond its extra vars, where the action's `allow` lists it:
# `limit` a host pattern (--limit), `check` a dry run (--check), `diff` the changes shown (--diff).
LaunchOption = Literal["limit", "check", "diff"]
LAUNCH_OPTIONS: tuple[str, ...] = get_args(LaunchOption)


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
    # At most this many of its jobs wait for an approval at once; one more launch is refused (429).
    approval_max_pending: int = 10
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


# ----- the file as written: every key typed, and checked once, when load() reads it -------------------

def _name(value: str) -> str:
    """An environment's or an action's name: stored in 64-character columns (PostgreSQL holds the console to that)."""
    if not value:
        raise ValueError("a name may not be empty")
    if len(value) > 64:
        raise ValueError(f"{value!r} is too long (at most 64 characters)")
    return value


_Name = Annotated[str, AfterValidator(_name)]
_Text = Annotated[str, StringConstraints(min_length=1)]


def _unique(values: list[str] | None) -> list[str] | None:
    if values is not None and len(set(values)) != len(values):
        raise ValueError("an item is listed twice")
    return values


class _FileSection(BaseModel):
    """A part of the config file: unknown keys are refused, no value is converted (3 is no string), and a key
    written with no value is refused rather than read as left out: `approval:` alone must not quietly
    turn an environment's approvals off, nor `registry:` the check of its tags."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _no_empty_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            empty = [str(key) for key, value in data.items() if value is None]
            if empty:
                raise ValueError(f"{', '.join(empty)}: written with no value; give one or leave the key out")
        return data


class VaultFile(_FileSection):
    password_file: str | None = None
    password_env: str | None = None


class RegistryFile(_FileSection):
    url: str
    username: str | None = None
    password_env: str | None = None
    password_file: str | None = None
    ca_file: str | None = None
    timeout: float = 5.0


class ApprovalFile(_FileSection):
    """A launch of these actions waits until another person approves it (every action when `actions` is left
    out), and expires after `timeout_minutes`."""

    actions: Annotated[list[_Text] | None, AfterValidator(_unique)] = Field(default=None, min_length=1)
    timeout_minutes: float = Field(default=60.0, gt=0, le=MAX_APPROVAL_MINUTES)
    max_pending: int = Field(default=10, ge=1, le=1000)


class ScheduleFile(_FileSection):
    """An action launched by itself at the minutes (UTC) of `cron`, as an admin of its environment: release and
    extra_vars as a launch gives them."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,47}$")
    action: _Text
    cron: str
    release: str | None = None
    extra_vars: dict[str, Any] = Field(default_factory=dict)


class EnvironmentFile(_FileSection):
    inventory: str
    description: str = ""
    approval: ApprovalFile | None = None
    schedules: list[ScheduleFile] = Field(default_factory=list, max_length=50)


class ReleaseFile(_FileSection):
    variable: str = "release"
    repository: str | None = None
    required: bool = True


class ActionFile(_FileSection):
    playbook: str
    description: str = ""
    service: str | None = Field(default=None, max_length=64)
    release: ReleaseFile | None = None
    extra_vars_schema: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})
    # None: deploy and rollback are a deployer's, every other action an admin's.
    role: Literal["deployer", "admin"] | None = None
    allow: Annotated[list[LaunchOption], AfterValidator(_unique)] = Field(default_factory=list)


class NotificationsFile(_FileSection):
    webhook_url: str | None = None


class RetentionFile(_FileSection):
    days: int = Field(default=30, ge=1)
    jobs: int = Field(default=500, ge=1)


class SecurityFile(_FileSection):
    secure_cookies: Literal["auto", "always", "never"] = "auto"
    session_hours: float = Field(default=12.0, gt=0)
    redact_values_env: list[str] = Field(default_factory=list)
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    login_attempts: int = Field(default=5, ge=1)
    login_window_seconds: int = Field(default=300, ge=1)
    trusted_proxies: list[_Text] = Field(default_factory=lambda: ["127.0.0.1"])


class ConfigFile(_FileSection):
    """The console's config file (docs/console.md, "Config file"); load() turns it into a Config."""

    project_dir: str | None = None
    data_dir: str | None = None
    database: str | None = None
    database_password_file: str | None = None
    database_password_env: str | None = None
    ansible_config: str | None = None
    envvars: dict[str, str] = Field(default_factory=dict)
    vault: VaultFile = VaultFile()
    registry: RegistryFile | None = None
    # Left out: every directory under the project's inventories/. Given: these environments only.
    environments: dict[_Name, EnvironmentFile] = Field(default_factory=dict)
    # Left out: DEFAULT_ACTIONS. Given: these actions only.
    actions: dict[_Name, ActionFile] = Field(default_factory=dict)
    notifications: NotificationsFile = NotificationsFile()
    retention: RetentionFile = RetentionFile()
    security: SecurityFile = SecurityFile()


# The three actions every fleetdeploy checkout has; the config file's `actions` replace them.
DEFAULT_ACTIONS: dict[str, ActionFile] = {
    "deploy": ActionFile(playbook="deploy.yml", description="Roll a release across the fleet, batch by batch",
                         release=ReleaseFile(), extra_vars_schema=ROLL_EXTRA_VARS_SCHEMA),
    "rollback": ActionFile(playbook="rollback.yml", description="Put the previous release back",
                           release=ReleaseFile(required=False), extra_vars_schema=ROLL_EXTRA_VARS_SCHEMA),
    # An admin's action, but a scoped admin is still no owner of the inventory: no extra vars at all.
    "provision": ActionFile(playbook="site.yml", description="Converge every host to its roles",
                            extra_vars_schema={"type": "object", "additionalProperties": False}),
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
    file = ConfigFile()
    base = REPO
    if path is not None:
        try:
            raw = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        try:
            file = ConfigFile.model_validate({} if raw is None else raw)
        except ValidationError as exc:
            error = exc.errors()[0]
            where = "/".join(str(p) for p in error["loc"]) or "top level"
            raise ConfigError(f"{path}: {where}: {error['msg']}") from None
        base = path.resolve().parent

    def resolve(value: str, root: Path) -> Path:
        p = Path(os.path.expanduser(value))
        return p if p.is_absolute() else (root / p).resolve()

    def resolved(value: str | None, root: Path) -> Path | None:
        return None if value is None else resolve(value, root)

    project_dir = resolved(file.project_dir, base) or REPO
    data = data_dir or resolved(file.data_dir, base) or default_data_dir()
    db = database_url(database or file.database or f"sqlite:///{data / 'console.db'}",
                      _database_password(resolved(file.database_password_file, base), file.database_password_env))

    if "environments" in file.model_fields_set:
        environments = {name: Environment(name, resolve(env.inventory, project_dir), env.description)
                        for name, env in file.environments.items()}
    else:
        inv_root = project_dir / "inventories"
        environments = {
            d.name: Environment(d.name, d)
            for d in sorted(inv_root.iterdir() if inv_root.is_dir() else [])
            if d.is_dir()
        }

    specs = file.actions if "actions" in file.model_fields_set else DEFAULT_ACTIONS
    actions: dict[str, Action] = {}
    for name, spec in specs.items():
        try:
            jsonschema.Draft202012Validator.check_schema(spec.extra_vars_schema)
        except jsonschema.SchemaError as exc:
            raise ConfigError(f"action {name}: extra_vars_schema: {exc.message}") from exc
        release = spec.release
        actions[name] = Action(
            name=name,
            playbook=resolve(spec.playbook, project_dir),
            description=spec.description,
            release=ReleaseSpec(release.variable, release.repository, release.required) if release else None,
            service=spec.service,
            extra_vars_schema=spec.extra_vars_schema,
            role=spec.role or ("deployer" if name in ("deploy", "rollback") else "admin"),
            allow=tuple(o for o in LAUNCH_OPTIONS if o in spec.allow),
        )

    for name, env in file.environments.items():
        schedules = []
        for index, entry in enumerate(env.schedules):
            where = f"environments/{name}/schedules/{index}"
            if entry.action not in actions:
                raise ConfigError(f"{where}/action: unknown action {entry.action!r} (known: {', '.join(actions)})")
            try:
                cron = Cron.parse(entry.cron)
            except CronError as exc:
                raise ConfigError(f"{where}/cron: {exc}") from exc
            schedule = Schedule(entry.name, name, entry.action, cron, entry.release, entry.extra_vars)
            if len(schedule.actor) > 64:  # the jobs' and audit entries' column
                raise ConfigError(f"{where}/name: {schedule.actor} is over 64 characters; shorten the name")
            schedules.append(schedule)
        names = [s.name for s in schedules]
        if len(set(names)) != len(names):
            raise ConfigError(f"environments/{name}/schedules: two schedules have one name")
        environments[name] = replace(environments[name], schedules=tuple(schedules))
        if env.approval is None:
            continue
        needing = list(actions) if env.approval.actions is None else env.approval.actions
        unknown = [a for a in needing if a not in actions]
        if unknown:
            raise ConfigError(f"environments/{name}/approval/actions: unknown action(s) {', '.join(unknown)} "
                              f"(known: {', '.join(actions)})")
        environments[name] = replace(environments[name], approval_actions=tuple(needing),
                                     approval_timeout_minutes=env.approval.timeout_minutes,
                                     approval_max_pending=env.approval.max_pending)

    registry = None
    if file.registry is not None:
        r = file.registry
        registry = RegistryConfig(
            url=r.url.rstrip("/"),
            username=r.username,
            password_env=r.password_env,
            password_file=resolved(r.password_file, base),
            ca_file=resolved(r.ca_file, project_dir),
            timeout=r.timeout,
            password_value=None if r.password_env is None else os.environ.get(r.password_env),
        )

    vault, security = file.vault, file.security
    redact = tuple(v for name in security.redact_values_env if (v := os.environ.get(name)))
    return Config(
        project_dir=project_dir,
        data_dir=data,
        database=db,
        database_password_env=file.database_password_env,
        environments=environments,
        actions=actions,
        vault_password_file=resolved(vault.password_file, base),
        vault_password_env=vault.password_env,
        vault_password_value=None if vault.password_env is None else os.environ.get(vault.password_env),
        registry=registry,
        webhook_url=file.notifications.webhook_url,
        retention_days=file.retention.days,
        retention_jobs=file.retention.jobs,
        secure_cookies=security.secure_cookies,
        session_hours=security.session_hours,
        redact_values=redact,
        ansible_config=resolved(file.ansible_config, base) or (
            project_dir / "ansible.cfg" if (project_dir / "ansible.cfg").is_file() else None
        ),
        envvars=dict(file.envvars),
        max_body_bytes=security.max_body_bytes,
        login_attempts=security.login_attempts,
        login_window_seconds=security.login_window_seconds,
        trusted_proxies=_trusted_proxies(security.trusted_proxies),
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
