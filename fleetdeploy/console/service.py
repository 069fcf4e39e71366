"""What the pages and the API share: the console's state, sign-in, launch validation, the audit log."""

from __future__ import annotations

import datetime as dt
import json
import re
import secrets
from dataclasses import dataclass
from typing import Any

import jsonschema
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from fleetdeploy.console.config import Action, Config, Environment
from fleetdeploy.console.db import Alert, ApiToken, AuditEntry, Job, Release, User, WebSession, make_engine, now
from fleetdeploy.console.jobs import JobManager, job_dict
from fleetdeploy.console.notify import Notifier
from fleetdeploy.console.registry import RegistryClient, RegistryError
from fleetdeploy.console.security import (
    LoginLimiter,
    Principal,
    new_token,
    token_digest,
    verify_password,
)

# Docker's own rule for a tag.
TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
# Jinja in an extra var is evaluated on the controller (lookup('pipe', ...)): never from a form.
_TEMPLATE = re.compile(r"\{\{|\{%|\{#")


class ConsoleError(Exception):
    """A refusal with the HTTP status that fits it and a message for a person."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


@dataclass
class LaunchRequest:
    environment: Environment
    action: Action
    release: str | None
    extra_vars: dict[str, Any]


class Console:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.engine = make_engine(config.database)
        self.sessions: sessionmaker[Session] = sessionmaker(self.engine, expire_on_commit=False)
        self.notifier = Notifier(config.webhook_url)
        self.jobs = JobManager(config, self.sessions, self.notifier)
        self.registry = RegistryClient(config.registry) if config.registry else None
        self.limiter = LoginLimiter(config.login_attempts, config.login_window_seconds)

    # ----- audit ------------------------------------------------------------------------------

    def audit(self, db: Session, actor: str, what: str, target: str = "", ip: str | None = None,
              **detail: Any) -> None:
        db.add(AuditEntry(actor=actor, action=what, target=target, detail=detail, ip=ip))

    # ----- who is asking ----------------------------------------------------------------------

    def sign_in(self, name: str, password: str, ip: str) -> tuple[str, str]:
        """Check the password; return (cookie value, csrf token). Raises ConsoleError on refusal."""
        keys = (f"ip:{ip}", f"user:{name.lower()}")
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

    def sign_out(self, cookie: str) -> None:
        with self.sessions() as db:
            session = db.get(WebSession, token_digest(cookie))
            if session:
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

    def create_token(self, db: Session, name: str, role: str, environments: list[str] | None,
                     created_by: str) -> tuple[ApiToken, str]:
        token = new_token()
        row = ApiToken(name=name, token_hash=token_digest(token), prefix=token[:10], role=role,
                       environments=environments, created_by=created_by)
        db.add(row)
        db.flush()
        return row, token

    def revoke_token(self, db: Session, token_id: int, actor: str, ip: str | None) -> ApiToken:
        """Revoke a token (again is a no-op) and audit it; the API and the admin page both come here."""
        row = db.get(ApiToken, token_id)
        if row is None:
            raise ConsoleError(404, f"no token {token_id}")
        row.revoked_at = row.revoked_at or now()
        self.audit(db, actor, "token_revoke", row.name, ip=ip)
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
                        extra_vars: Any) -> LaunchRequest:
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
        for key, value in extra_vars.items():
            if not _VAR_NAME.match(str(key)) or str(key).startswith("ansible_"):
                raise ConsoleError(422, f"extra var {key!r} is not allowed (a plain name, not ansible_*)")
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
        if not action.playbook.is_file():
            raise ConsoleError(422, f"{action_name}'s playbook {action.playbook.name} does not exist on the console")
        if not env.inventory.exists():
            raise ConsoleError(422, f"{environment}'s inventory {env.inventory} does not exist on the console")
        return LaunchRequest(env, action, release, extra_vars)

    def launch(self, who: Principal, req: LaunchRequest, ip: str | None) -> int:
        from fleetdeploy.console.jobs import Busy, ShuttingDown

        def record(db: Session, job: Job) -> None:
            self.audit(db, who.name, "job_launch", f"job {job.id}", ip=ip, environment=req.environment.name,
                       action=req.action.name, release=req.release)

        try:
            return self.jobs.launch(req.environment, req.action, req.release, req.extra_vars, who.name, record)
        except Busy as busy:
            raise ConsoleError(409, str(busy), running=busy.job) from busy
        except ShuttingDown as exc:
            raise ConsoleError(503, str(exc)) from exc

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
        with self.sessions() as db:
            row = db.get(Job, job_id)
            if row is None or not who.sees(row.environment):
                raise ConsoleError(404, f"no job {job_id}")
            out = job_dict(row)
            summary = row.summary
        live = self.jobs.live.get(job_id)
        if live is not None and live.status not in ("successful", "failed", "canceled", "interrupted", "error"):
            with live.lock:
                summary = {**live.grid.snapshot(), "events": live.received}
            out["status"] = live.status
        summary = summary or {"columns": [], "hosts": [], "cells": [], "recap": {}, "results": {}}
        out.update(hosts=summary["results"], recap=summary["recap"], grid=summary)
        return out

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
            q = q.where(Job.id < before)
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
                    "alerts": [alert_dict(a) for a in firing if a.environment in (name, None)],
                })
        return out

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


def _clip(value: Any, length: int) -> str | None:
    """A webhook's value cut to its column's length (PostgreSQL refuses longer strings; SQLite never checked)."""
    return None if value is None else str(value)[:length]


def alert_dict(a: Alert) -> dict[str, Any]:
    return {"fingerprint": a.fingerprint, "status": a.status, "name": a.name, "environment": a.environment,
            "severity": a.severity, "summary": a.summary, "starts_at": a.starts_at}
