"""Everything the web reads: jobs, their logs and live events, history, releases, the dashboard, the audit
log. Each read checks what its principal may see; a route never queries the database itself."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import select

from fleetdeploy.console.db import Alert, AuditEntry, Job, JobEvent, Release, job_dict, now
from fleetdeploy.console.domain import joblog
from fleetdeploy.console.domain.alerts import alert_dict
from fleetdeploy.console.domain.core import MAX_ID, Core
from fleetdeploy.console.domain.errors import ConsoleError
from fleetdeploy.console.redact import MASK, secret_key
from fleetdeploy.console.runner.live import Subscriber
from fleetdeploy.console.security import Principal
from fleetdeploy.console.status import FINAL, PENDING

# What a host's result must be for a retry of the failed hosts to run it again (runner/grid.py's Grid.host_results).
RETRIED_RESULTS = ("failed", "unreachable")


class Reads(Core):
    """Reads for a principal: a job outside its environments is a 404, as if it did not exist."""

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

    def environments(self, who: Principal) -> list[dict[str, Any]]:
        """The environments `who` sees, each with the job that holds it and whether `who` may launch there."""
        return [{"name": e.name, "description": e.description, "running": self.jobs.busy_job(e.name),
                 "may_launch": who.may("deployer", e.name)}
                for e in self.config.environments.values() if who.sees(e.name)]

    def audit_log(self, who: Principal, actor: str | None = None, action: str | None = None,
                  limit: int = 100) -> list[dict[str, Any]]:
        """The audit log, newest first, optionally of one actor or one kind of entry; for admins."""
        if not who.at_least("admin"):
            raise ConsoleError(403, "the audit log is for admins")
        q = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
        if actor:
            q = q.where(AuditEntry.actor == actor)
        if action:
            q = q.where(AuditEntry.action == action)
        with self.sessions() as db:
            return [{"at": a.at.isoformat(timespec="seconds"), "actor": a.actor, "action": a.action,
                     "target": a.target, "detail": a.detail, "ip": a.ip} for a in db.scalars(q)]

    def stored_events(self, who: Principal, job_id: int, after: int) -> list[dict[str, Any]]:
        """The stored messages of a job the principal may see, after counter `after`."""
        self.job(who, job_id)
        with self.sessions() as db:
            return list(db.scalars(select(JobEvent.data).where(JobEvent.job_id == job_id, JobEvent.counter > after)
                                   .order_by(JobEvent.counter)))

    @contextmanager
    def following(self, who: Principal, job_id: int, after: int, loop: asyncio.AbstractEventLoop
                  ) -> Iterator[tuple[asyncio.Queue[dict[str, Any] | None], list[dict[str, Any]]] | None]:
        """Within the block, the messages of a live job the principal may see arrive on the queue as they
        happen (None: no more), from `loop`; with it comes what was missed after counter `after`. None when
        the job is no longer live: read stored_events then. Read from memory alone (this runs on the event
        loop): a live job's final status is set once its events are stored."""
        live = self.jobs.live.get(job_id)
        if live is None or live.status in FINAL:
            yield None
            return
        if not who.sees(live.environment):
            raise ConsoleError(404, f"no job {job_id}")
        sub = Subscriber(loop, asyncio.Queue())
        backlog = live.subscribe(sub, after)
        try:
            yield sub.queue, backlog
        finally:
            live.unsubscribe(sub)

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


def failed_hosts(job: dict[str, Any]) -> list[str]:
    """The hosts a job (as Reads.job returns it) ended failed or unreachable on, in the grid's order."""
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

