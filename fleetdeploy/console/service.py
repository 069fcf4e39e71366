"""What the pages and the API share: the console's state, sign-in, launch validation, the audit log."""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import jsonschema
import yaml
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from fleetdeploy.console.config import LAUNCH_OPTIONS, TAG_PATTERN, Action, Config, Environment
from fleetdeploy.console import joblog
from fleetdeploy.console.db import (
    Alert,
    ApiToken,
    AuditEntry,
    Job,
    JobEvent,
    Release,
    User,
    WebSession,
    make_engine,
    now,
)
from fleetdeploy.console.jobs import FINAL, PENDING, JobManager, RunOptions, job_dict
from fleetdeploy.console.notify import Notifier
from fleetdeploy.console.redact import MASK, secret_key
from fleetdeploy.console.registry import RegistryClient, RegistryError
from fleetdeploy.console.schedule import Schedule, Scheduler
from fleetdeploy.console.security import (
    ROLES,
    TOKEN_ROLES,
    MIN_PASSWORD,
    LoginLimiter,
    Principal,
    hash_password,
    login_keys,
    new_token,
    token_digest,
    verify_password,
)

TAG = re.compile(TAG_PATTERN)
_VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
# Jinja in an extra var is evaluated on the controller (lookup('pipe', ...)): never from a form.
_TEMPLATE = re.compile(r"\{\{|\{%|\{#")
# Who runs a job reaches the playbooks as FLEETDEPLOY_ACTOR (the signed-in principal); an extra var
# of these names would override it (extra vars win over everything), whatever the action's schema.
RESERVED_VARS = frozenset({"deploy_actor", "app_release_actor"})
# Extra vars as JSON, at most: a job's extra vars are stored, served and notified (they reach
# ansible-playbook through a 0600 file); a real set of overrides is a few hundred bytes.
EXTRA_VARS_MAX_BYTES = 32 * 1024
# Job ids are 32-bit integers in the database (PostgreSQL's INTEGER).
MAX_ID = 2**31 - 1
# A host a retry may name in --limit: an inventory host name and nothing of Ansible's pattern language
# (`,` `:` `&` `!` `~` `*` `[...]`, and `@file`, which would read the hosts from a file).
LIMIT_HOST = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}$")
# A launch's --limit, where its action allows one: host and group names with Ansible's pattern operators
# (`,` `:` `&` `!` `*` `[0:2]`), nothing that reads a file (`@`), is a regex (`~`), quotes, spaces or is
# an option (a leading `-`).
LIMIT_PATTERN = re.compile(r"^[A-Za-z0-9_.,:&!*\[\]][A-Za-z0-9_.,:&!*\[\]-]{0,511}$")
# What a host's result must be for a retry of the failed hosts to run it again (grid.Grid.host_results).
RETRIED_RESULTS = ("failed", "unreachable")


class ConsoleError(Exception):
    """A refusal with the HTTP status that fits it and a message for a person."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


class _ExtraVarsLoader(yaml.SafeLoader):
    """YAML that can only mean JSON: no anchors or aliases (a 369-byte alias bomb expands to megabytes),
    no dates (`2024-01-01` stays a string), no !!binary, !!set or other tags beyond JSON's types."""

    # What the text is, for the messages: the extra vars, or one field of the launch form.
    what = "extra vars"

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise ConsoleError(422, f"{self.what}, line {event.start_mark.line + 1}: YAML anchors and aliases "
                                    "(& and *) are not allowed; write each value out")
        return super().compose_node(parent, index)


_ExtraVarsLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _refuse_tag(loader: _ExtraVarsLoader, node: yaml.Node) -> Any:
    raise ConsoleError(422, f"{loader.what}, line {node.start_mark.line + 1}: the YAML tag "
                            f"{node.tag.replace('tag:yaml.org,2002:', '!!')} is not allowed; "
                            "extra vars are strings, numbers, booleans, null, lists and mappings")


for _tag in ("binary", "timestamp", "set", "omap", "pairs"):
    _ExtraVarsLoader.add_constructor(f"tag:yaml.org,2002:{_tag}", _refuse_tag)
_ExtraVarsLoader.add_constructor(None, _refuse_tag)


def parse_extra_vars(text: str, what: str = "extra vars") -> Any:
    """The launch form's extra vars, or the value of one of its YAML fields (`what` names it), as JSON
    values; ConsoleError 4xx when they are not."""
    if len(text.encode()) > EXTRA_VARS_MAX_BYTES:
        raise ConsoleError(413, f"{what}: over {EXTRA_VARS_MAX_BYTES} bytes")
    if not text.strip():
        return {}
    loader = _ExtraVarsLoader(text)
    loader.what = what
    try:
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        raise ConsoleError(422, f"{what}: not valid YAML or JSON: {exc}") from exc
    finally:
        loader.dispose()


def _json_size(extra_vars: dict[str, Any]) -> int:
    """The extra vars' size as JSON; ConsoleError when they hold anything JSON cannot say."""
    def check(value: Any, where: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise ConsoleError(422, f"extra vars{where}: the key {key!r} is not a string")
                check(item, f"{where}/{key}")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                check(item, f"{where}/{i}")
        elif isinstance(value, float) and not math.isfinite(value):
            raise ConsoleError(422, f"extra vars{where}: {value} is not a number JSON can hold")
        elif not isinstance(value, (str, int, float, bool)) and value is not None:
            raise ConsoleError(422, f"extra vars{where}: a {type(value).__name__} is not a JSON value")

    check(extra_vars, "")
    return len(json.dumps(extra_vars, separators=(",", ":")).encode())


@dataclass
class LaunchRequest:
    environment: Environment
    action: Action
    release: str | None
    extra_vars: dict[str, Any]
    options: RunOptions = field(default_factory=RunOptions)


class Console:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.engine = make_engine(config.database)
        self.sessions: sessionmaker[Session] = sessionmaker(self.engine, expire_on_commit=False)
        self.notifier = Notifier(config.webhook_url)
        self.jobs = JobManager(config, self.sessions, self.notifier)
        self.registry = RegistryClient(config.registry) if config.registry else None
        self.limiter = LoginLimiter(config.login_attempts, config.login_window_seconds)
        self.scheduler = Scheduler(self)

    # ----- audit ------------------------------------------------------------------------------

    def audit(self, db: Session, actor: str, what: str, target: str = "", ip: str | None = None,
              **detail: Any) -> None:
        db.add(AuditEntry(actor=actor, action=what, target=target, detail=detail, ip=ip))

    # ----- who is asking ----------------------------------------------------------------------

    def sign_in(self, name: str, password: str, ip: str) -> tuple[str, str]:
        """Check the password; return (cookie value, csrf token). Raises ConsoleError on refusal."""
        keys = login_keys(ip, name)
        wait = self.limiter.blocked(*keys)
        if wait:
            raise ConsoleError(429, f"too many failed sign-ins; try again in {int(wait) + 1} s",
                               retry_after=int(wait) + 1)
        with self.sessions() as db:
            user = db.scalar(select(User).where(User.name == name))
            ok = verify_password(user.password_hash if user else None, password)
            if not ok or user is None or user.disabled:
                self.limiter.fail(*keys)
                self.audit(db, name[:64] or "-", "login_failed", ip=ip)
                db.commit()
                raise ConsoleError(401, "wrong user name or password")
            self.limiter.succeed(*keys)
            cookie, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
            db.add(WebSession(id=token_digest(cookie), user_id=user.id, csrf=csrf,
                              expires_at=now() + dt.timedelta(hours=self.config.session_hours)))
            self.audit(db, user.name, "login", ip=ip)
            db.commit()
            return cookie, csrf

    def sign_out(self, cookie: str, everywhere: bool = False) -> None:
        """End this browser session, or with `everywhere` every session of its user."""
        with self.sessions() as db:
            session = db.get(WebSession, token_digest(cookie))
            if session is None:
                return
            if everywhere:
                db.execute(delete(WebSession).where(WebSession.user_id == session.user_id))
                user = db.get(User, session.user_id)
                self.audit(db, user.name if user else "-", "logout_everywhere")
            else:
                db.delete(session)
            db.commit()

    def principal_from_cookie(self, cookie: str | None) -> Principal | None:
        if not cookie:
            return None
        with self.sessions() as db:
            session = db.get(WebSession, token_digest(cookie))
            if session is None or session.expires_at < now():
                return None
            user = db.get(User, session.user_id)
            if user is None or user.disabled:
                return None
            envs = tuple(user.environments) if user.environments is not None else None
            return Principal(user.name, user.role, envs, csrf=session.csrf)

    def principal_from_token(self, token: str) -> Principal | None:
        with self.sessions() as db:
            row = db.scalar(select(ApiToken).where(ApiToken.token_hash == token_digest(token)))
            if row is None or row.revoked_at is not None:
                return None
            if row.last_used_at is None or now() - row.last_used_at > dt.timedelta(minutes=1):
                row.last_used_at = now()
                db.commit()
            envs = tuple(row.environments) if row.environments is not None else None
            return Principal(f"token:{row.name}", row.role, envs, via_token=True)

    def principal_of(self, token: str | None, cookie: str | None) -> Principal | None:
        """Who a bearer token, else a session cookie, belongs to now; None when neither is valid."""
        if token is not None:
            return self.principal_from_token(token)
        return self.principal_from_cookie(cookie)

    # ----- users and tokens: the API, the pages and the CLI all come here -------------------------

    def _environments(self, environments: Iterable[str] | None) -> list[str] | None:
        if environments is None:
            return None
        names = list(dict.fromkeys(environments))
        if not names:
            raise ConsoleError(422, "environments: name at least one, or leave them out for every environment")
        unknown = [n for n in names if n not in self.config.environments]
        if unknown:
            raise ConsoleError(422, f"unknown environment(s): {', '.join(unknown)}")
        return names

    @staticmethod
    def _may_grant(who: Principal, role: str, environments: list[str] | None) -> None:
        reason = who.why_not_grant(role, environments)
        if reason:
            raise ConsoleError(403, reason)

    def save_user(self, who: Principal, name: str, role: str, environments: Iterable[str] | None,
                  password: str, ip: str | None = None, update: bool = False) -> User:
        """Create a user (or, with `update`, change its role, scope and password, which ends its sessions; an
        empty password on an update keeps the one it has)."""
        keep_password = update and password == ""
        if name.startswith(("schedule:", "token:")):
            raise ConsoleError(422, "a user's name may not start with schedule: or token: (the console's own actors)")
        if not name or len(name) > 64 or name != name.strip() or role not in ROLES or (
                len(password) < MIN_PASSWORD and not keep_password):
            raise ConsoleError(422, f"a user needs a name, a role ({', '.join(ROLES)}) and a password of at least "
                                    f"{MIN_PASSWORD} characters")
        envs = self._environments(environments)
        self._may_grant(who, role, envs)
        with self.sessions() as db:
            user = db.scalar(select(User).where(User.name == name))
            if user is not None and not update:
                raise ConsoleError(409, f"user {name} exists")
            if user is None:
                if keep_password:
                    raise ConsoleError(404, f"no user {name}")
                user = User(name=name, disabled=False)
                db.add(user)
            else:
                # Changing a user is managing it: its present scope must be within ours too.
                self._may_grant(who, user.role, user.environments)
                db.execute(delete(WebSession).where(WebSession.user_id == user.id))
            user.role, user.environments = role, envs
            if not keep_password:
                user.password_hash = hash_password(password)
            self.audit(db, who.name, "user_update" if update else "user_create", name, ip=ip, role=role,
                       environments=envs, password_changed=not keep_password)
            db.commit()
            return user

    def set_user_disabled(self, who: Principal, user_id: int, disabled: bool, ip: str | None = None) -> User:
        with self.sessions() as db:
            user = db.get(User, user_id) if 1 <= user_id <= MAX_ID else None
            if user is None:
                raise ConsoleError(404, f"no user {user_id}")
            self._may_grant(who, user.role, user.environments)
            user.disabled = disabled
            if disabled:
                db.execute(delete(WebSession).where(WebSession.user_id == user.id))
            self.audit(db, who.name, "user_disable" if disabled else "user_enable", user.name, ip=ip)
            db.commit()
            return user

    def create_token(self, who: Principal, name: str, role: str, environments: Iterable[str] | None,
                     ip: str | None = None) -> tuple[ApiToken, str]:
        """Create an API token; the token itself is returned here only."""
        if not name or len(name) > 64 or role not in TOKEN_ROLES:
            raise ConsoleError(422, f"a token needs a name and a role ({', '.join(TOKEN_ROLES)})")
        envs = self._environments(environments)
        self._may_grant(who, role, envs)
        token = new_token()
        with self.sessions() as db:
            row = ApiToken(name=name, token_hash=token_digest(token), prefix=token[:10], role=role,
                           environments=envs, created_by=who.name)
            db.add(row)
            self.audit(db, who.name, "token_create", name, ip=ip, role=role, environments=envs)
            db.commit()
            return row, token

    def revoke_token(self, who: Principal, token_id: int, ip: str | None = None) -> ApiToken:
        """Revoke a token (again is a no-op) and audit it."""
        with self.sessions() as db:
            row = db.get(ApiToken, token_id) if 1 <= token_id <= MAX_ID else None
            if row is None:
                raise ConsoleError(404, f"no token {token_id}")
            self._may_grant(who, row.role, row.environments)
            row.revoked_at = row.revoked_at or now()
            self.audit(db, who.name, "token_revoke", row.name, ip=ip)
            db.commit()
            return row

    # ----- launching --------------------------------------------------------------------------

    def releases(self, action: Action, fresh: bool = False) -> list[str] | None:
        """The tags an action may deploy, or None when any well-formed tag is accepted."""
        if not action.release or not action.release.repository or not self.registry:
            return None
        try:
            return self.registry.tags(action.release.repository, fresh=fresh)
        except RegistryError as exc:
            raise ConsoleError(503, str(exc)) from exc

    def validate_launch(self, who: Principal, environment: str, action_name: str, release: str | None,
                        extra_vars: Any, limit: str | None = None, check: bool = False,
                        diff: bool = False) -> LaunchRequest:
        """Everything a launch is checked for, from the API, the launch form, a relaunch, an approval or a
        schedule alike: who may run what where, the release, the extra vars, the options its action allows."""
        env = self.config.environments.get(environment)
        if env is None or not who.sees(environment):
            known = ", ".join(e for e in self.config.environments if who.sees(e)) or "none"
            raise ConsoleError(422, f"unknown environment {environment!r} (known: {known})")
        if not who.may("deployer", environment):
            raise ConsoleError(403, f"{who.name} ({who.role}) may not launch jobs on {environment}")
        action = self.config.actions.get(action_name)
        if action is None:
            raise ConsoleError(422, f"unknown action {action_name!r} (known: {', '.join(self.config.actions)})")
        if not who.may(action.role, environment):
            raise ConsoleError(403, f"{who.name} ({who.role}) may not run {action_name} on {environment}; "
                                    f"it needs {action.role}")
        if extra_vars is None:
            extra_vars = {}
        if not isinstance(extra_vars, dict):
            raise ConsoleError(422, "extra vars must be an object of name: value")
        size = _json_size(extra_vars)
        if size > EXTRA_VARS_MAX_BYTES:
            raise ConsoleError(413, f"extra vars are {size} bytes as JSON; at most {EXTRA_VARS_MAX_BYTES}")
        for key, value in extra_vars.items():
            if not _VAR_NAME.match(str(key)) or str(key).startswith("ansible_"):
                raise ConsoleError(422, f"extra var {key!r} is not allowed (a plain name, not ansible_*)")
            if key in RESERVED_VARS:
                raise ConsoleError(422, f"extra var {key!r} is not allowed: the console says who runs the job")
            if _TEMPLATE.search(json.dumps(value)):
                raise ConsoleError(422, f"extra var {key!r} contains a Jinja template; templates are not allowed")
        if action.release:
            var = action.release.variable
            if release is None and var in extra_vars:
                release = str(extra_vars[var])
            if release in (None, ""):
                if action.release.required:
                    raise ConsoleError(422, f"{action_name} needs a release")
                release = None
            else:
                assert release is not None
                if not TAG.match(release):
                    raise ConsoleError(422, f"release {release!r} is not a valid image tag")
                tags = self.releases(action)
                if tags is not None and release not in tags:
                    raise ConsoleError(422, f"release {release!r} is not in the registry's "
                                            f"{action.release.repository} (has: {', '.join(tags[-10:]) or 'no tags'})")
                extra_vars = {**extra_vars, var: release}
        elif release:
            raise ConsoleError(422, f"{action_name} takes no release")
        try:
            jsonschema.validate(extra_vars, action.extra_vars_schema, cls=jsonschema.Draft202012Validator)
        except jsonschema.ValidationError as exc:
            where = "/".join(str(p) for p in exc.absolute_path)
            raise ConsoleError(422, f"extra vars{' at ' + where if where else ''}: {exc.message}") from exc
        options = _run_options(action, limit, check, diff)
        if not action.playbook.is_file():
            raise ConsoleError(422, f"{action_name}'s playbook {action.playbook.name} does not exist on the console")
        if not env.inventory.exists():
            raise ConsoleError(422, f"{environment}'s inventory {env.inventory} does not exist on the console")
        return LaunchRequest(env, action, release, extra_vars, options)

    def launch(self, who: Principal, req: LaunchRequest, ip: str | None, relaunch_of: int | None = None,
               limit: list[str] | None = None) -> int:
        """Start the job, or, where the environment wants an approval for the action, leave it pending."""
        from fleetdeploy.console.jobs import Busy, ShuttingDown

        hold = req.environment.needs_approval(req.action.name)

        def record(db: Session, job: Job) -> None:
            # The options named as the job records them (its `limit` is a retry's hosts), where set.
            options = {"limit_pattern": req.options.limit, "check": req.options.check, "diff": req.options.diff}
            detail: dict[str, Any] = {k: v for k, v in options.items() if v}
            if hold:
                detail["pending_approval"] = True
            if relaunch_of is None:
                self.audit(db, who.name, "job_launch", f"job {job.id}", ip=ip, environment=req.environment.name,
                           action=req.action.name, release=req.release, **detail)
            else:
                self.audit(db, who.name, "job_relaunch", f"job {job.id}", ip=ip, environment=req.environment.name,
                           action=req.action.name, release=req.release, relaunch_of=relaunch_of, limit=limit,
                           **detail)

        try:
            return self.jobs.launch(req.environment, req.action, req.release, req.extra_vars, who.name, record,
                                    limit=limit, relaunch_of=relaunch_of, hold=hold, options=req.options)
        except Busy as busy:
            raise ConsoleError(409, str(busy), running=busy.job) from busy
        except ShuttingDown as exc:
            raise ConsoleError(503, str(exc)) from exc

    def approval_offer(self, who: Principal, job: dict[str, Any]) -> tuple[bool, str]:
        """Whether `who` may approve or reject a pending job, and if not, why (shown on its page)."""
        action = self.config.actions.get(job["action"])
        if job["status"] != PENDING:
            return False, ""
        if who.via_token:
            # A token is no second person: whoever holds one may also have launched the job as themselves.
            return False, "an approval is a person's, signed in to the console, not a token's"
        if action is None or not who.may(action.role, job["environment"]):
            return False, f"it needs a {action.role if action else 'admin'} of {job['environment']} to approve it"
        if who.name == job["launched_by"]:
            return False, "another person must approve it: you launched it"
        return True, ""

    def may_reject(self, who: Principal, job: dict[str, Any]) -> bool:
        """Whether `who` may reject (or, as its launcher, withdraw) a pending job: anyone who may launch its action there."""
        action = self.config.actions.get(job["action"])
        return job["status"] == PENDING and action is not None and who.may(action.role, job["environment"])

    def approve(self, who: Principal, job_id: int, ip: str | None) -> dict[str, Any]:
        """Start a pending job as approved by `who`: a second person who may launch the action there, who
        sees it checked again as a fresh launch is (the release still in the registry, the schema)."""
        from fleetdeploy.console.jobs import Busy, NotPending, ShuttingDown

        job = self.job(who, job_id)  # 404 outside `who`'s environments
        if job["status"] != PENDING:
            raise ConsoleError(409, f"job {job_id} is {job['status']}; only a pending job can be approved")
        allowed, why = self.approval_offer(who, job)
        if not allowed:
            raise ConsoleError(403, f"{who.name} may not approve job {job_id}: {why}")
        extra_vars = self.jobs.held_extra_vars(job_id)
        if extra_vars is None:
            masked = masked_extra_vars(job)
            if masked:
                raise ConsoleError(409, f"job {job_id}'s extra vars {', '.join(masked)} held secrets, which the "
                                        "console restarted without (it never stores them): reject it and launch anew")
            extra_vars = job["extra_vars"]
        req = self.validate_launch(who, job["environment"], job["action"], job["release"], extra_vars,
                                   job["limit_pattern"], job["check"], job["diff"])

        def record(db: Session, row: Job) -> None:
            self.audit(db, who.name, "job_approve", f"job {job_id}", ip=ip, environment=row.environment,
                       action=row.action, release=row.release, launched_by=row.launched_by)

        try:
            self.jobs.approve(job_id, who.name, req.environment, req.action, req.extra_vars, record)
        except NotPending as exc:
            raise ConsoleError(409, str(exc)) from exc
        except Busy as busy:
            raise ConsoleError(409, f"{busy}; approve again once it has ended", running=busy.job) from busy
        except ShuttingDown as exc:
            raise ConsoleError(503, str(exc)) from exc
        return self.job(who, job_id)

    def reject(self, who: Principal, job_id: int, reason: str, ip: str | None) -> dict[str, Any]:
        """End a pending job without running it: anyone who may launch the action there (its launcher too,
        who withdraws it), with a reason for the record."""
        from fleetdeploy.console.jobs import NotPending

        job = self.job(who, job_id)
        if job["status"] != PENDING:
            raise ConsoleError(409, f"job {job_id} is {job['status']}; only a pending job can be rejected")
        if not self.may_reject(who, job):
            raise ConsoleError(403, f"{who.name} ({who.role}) may not reject job {job_id} on {job['environment']}")
        reason = " ".join(reason.split())[:500]

        def record(db: Session, row: Job) -> None:
            self.audit(db, who.name, "job_reject", f"job {job_id}", ip=ip, environment=row.environment,
                       action=row.action, release=row.release, launched_by=row.launched_by, reason=reason)

        try:
            self.jobs.reject(job_id, who.name, reason, record)
        except NotPending as exc:
            raise ConsoleError(409, str(exc)) from exc
        return self.job(who, job_id)

    def relaunch(self, who: Principal, job_id: int, failed_only: bool, ip: str | None) -> int:
        """Launch job `job_id` again as `who`: its environment, action, release and extra vars, checked by
        validate_launch as a fresh launch is. With `failed_only`, on its failed and unreachable hosts only."""
        old = self.job(who, job_id)  # 404 for a job outside `who`'s environments
        req = self.validate_launch(who, old["environment"], old["action"], old["release"], old["extra_vars"],
                                   old["limit_pattern"], old["check"], old["diff"])
        if old["status"] not in FINAL:
            raise ConsoleError(409, f"job {job_id} is {old['status']}; relaunch it once it has ended")
        masked = masked_extra_vars(old)
        if masked:
            raise ConsoleError(422, f"job {job_id}'s extra vars {', '.join(masked)} held secrets the console does "
                                    "not keep; launch the action anew with them")
        # A relaunch of a retry runs on the same hosts as that retry did.
        limit = failed_hosts(old) if failed_only else old["limit"]
        if failed_only and not limit:
            raise ConsoleError(409, f"job {job_id} has no failed or unreachable host to retry")
        bad = [h for h in limit or [] if not isinstance(h, str) or not LIMIT_HOST.match(h)]
        if bad:
            raise ConsoleError(422, f"job {job_id}'s hosts {', '.join(map(str, bad))} are not inventory host names "
                                    "the console will put in --limit")
        return self.launch(who, req, ip, relaunch_of=job_id, limit=limit)

    def relaunch_offer(self, who: Principal, job: dict[str, Any]) -> tuple[bool, list[str]]:
        """Whether a job's page offers `who` a Relaunch, and the hosts its Retry names (none: no Retry)."""
        action = self.config.actions.get(job["action"])
        if action is None or job["status"] not in FINAL or not who.may(action.role, job["environment"]):
            return False, []
        return True, failed_hosts(job) if job["status"] == "failed" else []

    def cancel(self, who: Principal, job_id: int, ip: str | None) -> dict[str, Any]:
        job = self.job(who, job_id)
        if not who.may("deployer", job["environment"]):
            raise ConsoleError(403, f"{who.name} ({who.role}) may not cancel jobs on {job['environment']}")
        if not self.jobs.cancel(job_id, who.name):
            raise ConsoleError(409, f"job {job_id} is {job['status']}; only a queued or running job can be canceled")
        with self.sessions() as db:
            self.audit(db, who.name, "job_cancel", f"job {job_id}", ip=ip)
            db.commit()
        return self.job(who, job_id)

    # ----- reading ----------------------------------------------------------------------------

    def job(self, who: Principal, job_id: int) -> dict[str, Any]:
        if not 1 <= job_id <= MAX_ID:
            raise ConsoleError(404, f"no job {job_id}")
        with self.sessions() as db:
            row = db.get(Job, job_id)
            if row is None or not who.sees(row.environment):
                raise ConsoleError(404, f"no job {job_id}")
            out = job_dict(row)
            summary = row.summary
        live = self.jobs.live.get(job_id)
        if live is not None and live.status not in FINAL:
            with live.lock:
                summary = {**live.grid.snapshot(), "events": live.received}
            out["status"] = live.status
        summary = summary or {"columns": [], "hosts": [], "cells": [], "recap": {}, "results": {}}
        out.update(hosts=summary["results"], recap=summary["recap"], grid=summary, elapsed=_elapsed(out))
        return out

    def job_messages(self, who: Principal, job_id: int,
                     host: str | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The job (404 outside `who`'s environments) and its redacted messages in order, optionally only
        `host`'s: from memory while the job is live (the database writer may lag), else as stored."""
        job = self.job(who, job_id)
        live = self.jobs.live.get(job_id)
        if live is not None:
            with live.lock:
                messages = list(live.messages)
            if host is not None:
                messages = [m for m in messages if m.get("type") == "event"
                            and (m["event"].get("event_data") or {}).get("host") == host]
            return job, messages
        q = select(JobEvent.data).where(JobEvent.job_id == job_id).order_by(JobEvent.counter)
        if host is not None:
            q = q.where(JobEvent.host == host)
        with self.sessions() as db:
            job["events_pruned"] = bool(db.scalar(select(Job.events_pruned).where(Job.id == job_id)))
            return job, list(db.scalars(q))

    def host_log(self, who: Principal, job_id: int, host: str) -> dict[str, Any]:
        """Every result `host` had in the job, in order, with each task's elapsed seconds."""
        job, messages = self.job_messages(who, job_id, host)
        if host not in job["grid"]["hosts"]:
            raise ConsoleError(404, f"job {job_id} ran on no host {host!r}")
        return {"job_id": job_id, "host": host, "result": job["hosts"].get(host),
                "events_pruned": job.get("events_pruned", False), "tasks": joblog.host_log(messages, host)}

    def search_log(self, who: Principal, job_id: int, text: str, host: str | None = None) -> dict[str, Any]:
        _, messages = self.job_messages(who, job_id, host)
        found = joblog.search(messages, text, host)
        return {"job_id": job_id, "query": text, "host": host, "matches": found,
                "truncated": len(found) >= joblog.MAX_MATCHES}

    def log_text(self, who: Principal, job_id: int) -> str:
        job, messages = self.job_messages(who, job_id)
        head = (f"# job {job['id']}: {job['action']} of {job['environment']}"
                f"{' to ' + job['release'] if job['release'] else ''}, launched by {job['launched_by']} "
                f"at {job['created_at']}, {job['status']}"
                f"{', rc ' + str(job['rc']) if job['rc'] is not None else ''}\n")
        if job.get("events_pruned"):
            head += "# the events of this job were pruned (retention); its output is gone\n"
        return head + "".join(joblog.as_text(messages))

    def release_history(self, who: Principal, environment: str, service: str | None = None,
                        limit: int = 100) -> list[dict[str, Any]]:
        """The jobs that released a service (actions with `service:`) in an environment, newest first."""
        self._seen_environment(who, environment)
        # A job that never started (pending, rejected, expired) released nothing; nor did one in check mode.
        q = (select(Job).where(Job.environment == environment, Job.service.is_not(None), Job.started_at.is_not(None),
                               Job.check_mode.is_(False))
             .order_by(Job.id.desc()).limit(max(1, min(limit, 500))))
        if service:
            q = q.where(Job.service == service)
        with self.sessions() as db:
            return [{**job_dict(j), "digests": (j.summary or {}).get("digests") or {},
                     "hosts": (j.summary or {}).get("results") or {}} for j in db.scalars(q)]

    def release_diff(self, who: Principal, environment: str, before: int, after: int) -> dict[str, Any]:
        """What changed in the settings (release and extra vars, secrets masked) from job `before` to `after`."""
        self._seen_environment(who, environment)
        old, new = self.job(who, before), self.job(who, after)
        for job in (old, new):
            if job["environment"] != environment:
                raise ConsoleError(404, f"no job {job['id']} in {environment}")

        def settings(job: dict[str, Any]) -> dict[str, Any]:
            values = {"release": job["release"], **job["extra_vars"]}
            return {k: MASK if secret_key(k) and v is not None else v for k, v in values.items()}

        a, b = settings(old), settings(new)
        changes = [{"name": k, "before": a.get(k), "after": b.get(k),
                    "change": "added" if k not in a else "removed" if k not in b else "changed"}
                   for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k) or (k in a) != (k in b)]
        return {"environment": environment, "before": old["id"], "after": new["id"], "changes": changes,
                "same": [k for k in sorted(a.keys() & b.keys()) if a[k] == b[k]]}

    def _seen_environment(self, who: Principal, environment: str) -> None:
        if environment not in self.config.environments or not who.sees(environment):
            raise ConsoleError(404, f"no environment {environment!r}")

    def list_jobs(self, who: Principal, environment: str | None = None, action: str | None = None,
                  status: str | None = None, user: str | None = None, before: int | None = None,
                  limit: int = 50) -> list[dict[str, Any]]:
        q = select(Job).order_by(Job.id.desc()).limit(max(1, min(limit, 500)))
        if environment:
            q = q.where(Job.environment == environment)
        if action:
            q = q.where(Job.action == action)
        if status:
            q = q.where(Job.status == status)
        if user:
            q = q.where(Job.launched_by == user)
        if before:
            q = q.where(Job.id < max(0, min(before, MAX_ID + 1)))
        if who.environments is not None:
            q = q.where(Job.environment.in_(who.environments))
        with self.sessions() as db:
            return [job_dict(j) for j in db.scalars(q)]

    def dashboard(self, who: Principal) -> list[dict[str, Any]]:
        out = []
        with self.sessions() as db:
            firing = db.scalars(select(Alert).where(Alert.status == "firing").order_by(Alert.updated_at.desc())).all()
            for name, env in self.config.environments.items():
                if not who.sees(name):
                    continue
                releases: dict[str, dict[str, str]] = {}
                for r in db.scalars(select(Release).where(Release.environment == name)
                                    .order_by(Release.service, Release.host)):
                    releases.setdefault(r.service, {})[r.host] = r.release
                recent = [job_dict(j) for j in db.scalars(select(Job).where(Job.environment == name)
                                                          .order_by(Job.id.desc()).limit(5))]
                out.append({
                    "name": name, "description": env.description, "inventory": str(env.inventory),
                    "releases": releases, "running": self.jobs.busy_job(name), "recent": recent,
                    "pending": [job_dict(j) for j in db.scalars(select(Job).where(
                        Job.environment == name, Job.status == PENDING).order_by(Job.id))],
                    "alerts": [alert_dict(a) for a in firing if a.environment in (name, None)],
                    "schedules": self.schedules(who, name),
                })
        return out

    # ----- schedules ----------------------------------------------------------------------------

    def schedules(self, who: Principal, environment: str | None = None) -> list[dict[str, Any]]:
        """The schedules of the environments this principal sees, each with the next minute it fires (UTC)."""
        at = dt.datetime.now(dt.timezone.utc)
        return [{"environment": s.environment, "name": s.name, "action": s.action, "cron": s.cron.text,
                 "release": s.release, "actor": s.actor, "next_run": _iso(s.cron.next_after(at))}
                for env in self.config.environments.values() if who.sees(env.name)
                and environment in (None, env.name) for s in env.schedules]

    def open_job_of(self, actor: str, environment: str) -> int | None:
        """The id of a job `actor` launched on `environment` that has not ended (pending, queued, running)."""
        with self.sessions() as db:
            return db.scalar(select(Job.id).where(Job.launched_by == actor, Job.environment == environment,
                                                  Job.status.not_in(FINAL)).limit(1))

    def record_schedule_skip(self, schedule: Schedule, reason: str) -> None:
        """A schedule's minute that launched nothing (another job ran, a release went missing): audited."""
        with self.sessions() as db:
            self.audit(db, schedule.actor, "schedule_skip", schedule.name, environment=schedule.environment,
                       action=schedule.action, reason=reason[:500])
            db.commit()

    def receive_alerts(self, payload: dict[str, Any]) -> int:
        """Store an Alertmanager webhook (version 4): firing alerts upserted, resolved ones closed."""
        alerts = payload.get("alerts")
        if not isinstance(alerts, list):
            raise ConsoleError(422, "not an Alertmanager webhook: no 'alerts' list")
        common = payload.get("commonLabels") or {}
        with self.sessions() as db:
            for item in alerts:
                if not isinstance(item, dict) or not isinstance(item.get("labels", {}), dict):
                    raise ConsoleError(422, "each alert needs a 'labels' object")
                labels = {**common, **(item.get("labels") or {})}
                fingerprint = str(item.get("fingerprint") or json.dumps(labels, sort_keys=True))[:128]
                annotations = item.get("annotations") or {}
                db.merge(Alert(
                    fingerprint=fingerprint,
                    status="resolved" if item.get("status") == "resolved" else "firing",
                    name=str(labels.get("alertname", "alert"))[:255],
                    environment=_clip(labels.get("environment") or labels.get("env"), 64),
                    severity=_clip(labels.get("severity"), 32),
                    summary=str(annotations.get("summary") or annotations.get("description") or "")[:2000],
                    labels=labels, starts_at=_clip(item.get("startsAt"), 40), ends_at=_clip(item.get("endsAt"), 40),
                    updated_at=now(),
                ))
            db.commit()
        return len(alerts)


def _run_options(action: Action, limit: str | None, check: bool, diff: bool) -> RunOptions:
    """The launch's --limit, --check and --diff, each refused unless the action's `allow` lists it."""
    asked = {"limit": bool(limit), "check": check, "diff": diff}
    refused = [o for o in LAUNCH_OPTIONS if asked[o] and o not in action.allow]
    if refused:
        raise ConsoleError(422, f"{action.name} does not allow {', '.join(refused)} (its `allow` in the "
                                f"console's config: {', '.join(action.allow) or 'nothing'})")
    if limit and not LIMIT_PATTERN.match(limit):
        raise ConsoleError(422, f"limit {limit!r} is not a host pattern the console passes on: host and group "
                                "names with , : & ! * [ ], not starting with -, no spaces, quotes, @ or ~")
    return RunOptions(limit or None, check, diff)


def masked_extra_vars(job: dict[str, Any]) -> list[str]:
    """The extra vars a job stored masked: secrets the console never keeps, so it cannot run the job again."""
    return sorted(k for k, v in job["extra_vars"].items() if v == MASK)


def failed_hosts(job: dict[str, Any]) -> list[str]:
    """The hosts a job (as Console.job returns it) ended failed or unreachable on, in the grid's order."""
    results = job["hosts"]
    return [h for h in job["grid"]["hosts"] if results.get(h) in RETRIED_RESULTS]


def _elapsed(job: dict[str, Any]) -> float | None:
    """Seconds the job ran: start to finish, or start to now while it runs; None before it starts."""
    if not job["started_at"]:
        return None
    end = dt.datetime.fromisoformat(job["finished_at"]) if job["finished_at"] else now()
    return max(0.0, (end - dt.datetime.fromisoformat(job["started_at"])).total_seconds())


def _iso(when: dt.datetime | None) -> str | None:
    return when.isoformat(timespec="minutes") if when else None


def _clip(value: Any, length: int) -> str | None:
    """A webhook's value cut to its column's length (PostgreSQL refuses longer strings; SQLite never checked)."""
    return None if value is None else str(value)[:length]


def alert_dict(a: Alert) -> dict[str, Any]:
    return {"fingerprint": a.fingerprint, "status": a.status, "name": a.name, "environment": a.environment,
            "severity": a.severity, "summary": a.summary, "starts_at": a.starts_at}
