"""Running playbooks: one ansible-runner job per launch, events fanned out to the database and browsers.

Threads per job: ansible-runner's own (reads the playbook's output and calls event_handler), the
ingester (redacts, folds into the grid, fans out to the browsers from memory, hands to the writer)
and the supervisor (starts the run, waits for it, drains the writer, finishes the job). One writer
thread for all jobs (writer.EventWriter) stores the events in batches. event_handler only puts on a
queue: neither the database nor a browser can hold up the playbook. The hosts each play will touch come
in the output itself (playbook.HOSTS_PREFIX), so the grid shows them as pending from the play's start.
"""

from __future__ import annotations

import asyncio
import configparser
import datetime as dt
import hashlib
import json
import logging
import os
import queue
import shlex
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import ansible_runner
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from fleetdeploy.console.config import Action, Config, Environment, shown_database
from fleetdeploy.console.db import AuditEntry, Job, JobEvent, Release, now
from fleetdeploy.console.grid import DIGEST_FACT, RELEASE_FACT, Grid
from fleetdeploy.console.notify import Notifier
from fleetdeploy.console.playbook import HOSTS_PREFIX, KNOWN_ENV, write_known
from fleetdeploy.console.redact import MASK, MAX_STDOUT, Redactor, scalars, secret_key, vault_secrets, walk_files
from fleetdeploy.console.writer import EventWriter

log = logging.getLogger(__name__)

# Every process of a job carries this variable, so a sweep of /proc finds all of them, even ones
# that left the process group (ssh ControlPersist masters daemonise). Its value names the console's
# job store as well as the job: two consoles on one machine (staging's and prod's) both have a job 7.
JOB_MARKER = "FLEETDEPLOY_CONSOLE_JOB"
BIN_DIR = os.path.dirname(sys.executable)
PLAYBOOK_MODULE = "fleetdeploy.console.playbook"
FINAL = ("successful", "failed", "canceled", "interrupted", "error", "rejected", "expired")
# A launch waiting for a second person's approval (Environment.approval_actions): it holds no lock and runs nothing.
PENDING = "pending"
# pexpect_timeout: how often runner checks cancel_callback while the playbook is quiet.
RUNNER_SETTINGS = {"suppress_output_file": True, "suppress_ansible_output": True, "pexpect_timeout": 0.25,
                   "pexpect_use_poll": True}
_END = object()
# Not "jsonfile": runner then leaves the fact cache settings alone (see _supervise).
_FACT_CACHE_FROM_ANSIBLE = "ansible"

# Events the console shows; verbose/debug-only ones (e.g. runner_on_start for items) still count.
_SLIM_RES_KEYS = ("msg", "changed", "failed", "unreachable", "skipped", "rc", "stderr", "censored", "skip_reason")


def host_key_checking(ansible_config: Path, environ: dict[str, str]) -> str:
    """The host key checking ansible-playbook would do: ANSIBLE_HOST_KEY_CHECKING when set, else
    [defaults] host_key_checking of the ansible.cfg in use, else Ansible's default (on). ansible-runner
    turns it off for every run that does not say, so a console job must say what Ansible would do."""
    if "ANSIBLE_HOST_KEY_CHECKING" in environ:
        return environ["ANSIBLE_HOST_KEY_CHECKING"]
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=("#", ";"))
    try:
        parser.read(ansible_config)
        return str(parser.getboolean("defaults", "host_key_checking", fallback=True))
    except (configparser.Error, ValueError):
        return "True"


@dataclass(frozen=True)
class RunOptions:
    """A launch's options for ansible-playbook (config.LAUNCH_OPTIONS), checked by service.validate_launch."""

    limit: str | None = None
    check: bool = False
    diff: bool = False


class NotPending(Exception):
    """An approval or rejection of a job that no longer waits for one; the message says what it is now."""


class ShuttingDown(Exception):
    """The console is stopping and takes no new job."""


class Busy(Exception):
    """Another job holds the environment."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.job = job
        super().__init__(
            f"environment {job['environment']} is busy: {job['launched_by']} is running "
            f"{job['action']}{' of ' + job['release'] if job.get('release') else ''} (job {job['id']}, "
            f"started {job['started_at'] or job['created_at']})"
        )


@dataclass(eq=False)
class Subscriber:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[dict[str, Any] | None]

    def push(self, msg: dict[str, Any] | None) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, msg)
        except RuntimeError:  # the browser's loop has closed
            pass


@dataclass(eq=False)
class LiveJob:
    """A running job as the console holds it in memory: the source for live views."""

    id: int
    environment: str
    action: str
    release: str | None
    launched_by: str
    created_at: dt.datetime
    status: str = "queued"
    started_at: dt.datetime | None = None
    grid: Grid = field(default_factory=Grid)
    messages: list[dict[str, Any]] = field(default_factory=list)
    subscribers: set[Subscriber] = field(default_factory=set)
    redactor: Redactor = field(default_factory=Redactor)
    lock: threading.Lock = field(default_factory=threading.Lock)
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    canceled_by: str | None = None
    events: "queue.SimpleQueue[Any]" = field(default_factory=queue.SimpleQueue)
    received: int = 0
    done: threading.Event = field(default_factory=threading.Event)
    # The playbook's process group and its leader's identity, once it runs (see process_identity).
    pgid: int | None = None
    process_start: str | None = None
    check: bool = False

    def brief(self) -> dict[str, Any]:
        return {"id": self.id, "environment": self.environment, "action": self.action,
                "release": self.release, "launched_by": self.launched_by, "status": self.status,
                "check": self.check,
                "created_at": self.created_at.isoformat(timespec="seconds"),
                "started_at": self.started_at.isoformat(timespec="seconds") if self.started_at else None}

    def publish(self, msg: dict[str, Any]) -> None:
        with self.lock:
            self.messages.append(msg)
            for sub in self.subscribers:
                sub.push(msg)

    def subscribe(self, sub: Subscriber, after: int) -> list[dict[str, Any]]:
        """Register a browser and return what it missed, atomically, so no message is lost or doubled."""
        with self.lock:
            self.subscribers.add(sub)
            return [m for m in self.messages if m.get("id", after + 1) > after or m["type"] != "event"]

    def unsubscribe(self, sub: Subscriber) -> None:
        with self.lock:
            self.subscribers.discard(sub)

    def end_streams(self) -> None:
        """Tell every browser's stream to close (a None on its queue)."""
        with self.lock:
            for sub in self.subscribers:
                sub.push(None)


def job_dict(job: Job) -> dict[str, Any]:
    return {
        "id": job.id, "environment": job.environment, "action": job.action, "release": job.release,
        "service": job.service, "extra_vars": job.extra_vars, "launched_by": job.launched_by,
        "status": job.status, "rc": job.rc, "canceled_by": job.canceled_by, "explanation": job.explanation,
        "created_at": job.created_at.isoformat(timespec="seconds"),
        "started_at": job.started_at.isoformat(timespec="seconds") if job.started_at else None,
        "finished_at": job.finished_at.isoformat(timespec="seconds") if job.finished_at else None,
        "relaunch_of": job.relaunch_of, "limit": job.limit_hosts,
        "limit_pattern": job.limit_pattern, "check": job.check_mode, "diff": job.diff_mode,
        "approval_deadline": job.approval_deadline.isoformat(timespec="seconds") if job.approval_deadline else None,
        "decided_by": job.decided_by,
    }


def job_marker(database: str, job_id: int) -> str:
    """The marker value of one job of the console whose job store is `database`.

    The marker is in every process of the job's environment: it is made from the URL without its password.
    """
    return f"{hashlib.sha256(shown_database(database).encode()).hexdigest()[:12]}-{job_id}"


def job_processes(job: str) -> list[int]:
    """PIDs of every process that carries this job marker (see job_marker) in /proc/<pid>/environ."""
    marker = f"{JOB_MARKER}={job}".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as fh:
                env = fh.read()
        except OSError:
            continue
        if marker + b"\0" in env or env.endswith(marker):
            found.append(int(entry.name))
    return found


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat from the state on (the name before it may hold spaces): [0] state, [1] ppid, [2] pgrp,
    [19] start time in clock ticks after boot."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_identity(pid: int) -> str | None:
    """Who a PID is, not only its number: the boot and the start time (a reused PID has another start time)."""
    fields = _stat(pid)
    if fields is None or fields[0] == "Z":
        return None
    return f"{_BOOT_ID}:{fields[19]}"


def kill_process_group(pgid: int, identity: str | None) -> bool:
    """SIGKILL the process group `pgid` if its leader is still the process recorded as `identity`."""
    if not identity or process_identity(pgid) != identity:
        return False
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def kill_job_processes(job: str, timeout: float = 5.0) -> list[int]:
    """SIGKILL every process group of the job (a job_marker), then wait until none is left; returns the PIDs found."""
    pids = job_processes(job)
    for pid in pids:
        for kill in (lambda p: os.killpg(os.getpgid(p), signal.SIGKILL), lambda p: os.kill(p, signal.SIGKILL)):
            try:
                kill(pid)
            except (ProcessLookupError, PermissionError):
                pass
    deadline = time.monotonic() + timeout
    while pids and time.monotonic() < deadline:
        alive = [p for p in job_processes(job) if _alive(p)]
        if not alive:
            break
        time.sleep(0.05)
    return pids


def _alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def _read_boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip()
    except OSError:
        return "unknown-boot"


_BOOT_ID = _read_boot_id()


def remove_run_dir(run_dir: Path) -> None:
    """A job's private data dir holds nothing the database lacks, and may hold its environment
    (runner's `command` artifact) and its extra vars: gone at every end of the job."""
    shutil.rmtree(run_dir, ignore_errors=True)


def secret_extra_vars(extra_vars: dict[str, Any], schema: dict[str, Any]) -> set[str]:
    """Names of the extra vars that hold a secret: a name like a password's or token's, or `writeOnly` in the schema."""
    props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
    return {k for k in extra_vars
            if secret_key(k) or (isinstance(props.get(k), dict) and props[k].get("writeOnly") is True)}


def slim_event(raw: dict[str, Any], redactor: Redactor) -> dict[str, Any]:
    """The redacted event as stored and streamed: what the log and the grid need, nothing more."""
    data = raw.get("event_data") or {}
    res = data.get("res")
    if isinstance(res, dict):
        if res.get("_ansible_no_log"):
            res = {"censored": True}
        else:
            facts = res.get("ansible_facts") if isinstance(res.get("ansible_facts"), dict) else {}
            res = {k: res[k] for k in _SLIM_RES_KEYS if k in res}
            # Of all facts, only what the dashboard and the release history show.
            shown = {k: facts[k] for k in (RELEASE_FACT, DIGEST_FACT) if k in facts}
            if shown:
                res["ansible_facts"] = shown
    stdout = raw.get("stdout") or ""
    if len(stdout) > MAX_STDOUT:
        stdout = stdout[:MAX_STDOUT] + "\n… (cut)"
    kept: dict[str, Any] = {k: data[k] for k in ("host", "task", "play", "play_uuid", "task_action", "ignore_errors",
                                                 "ok", "changed", "failures", "dark", "skipped", "rescued",
                                                 "ignored", "duration") if k in data}
    if res is not None:
        kept["res"] = res
    ev = {"counter": raw.get("counter"), "event": raw.get("event"), "created": raw.get("created"),
          "stdout": stdout, "event_data": kept}
    return redactor.value(ev)  # type: ignore[no-any-return]


class JobManager:
    def __init__(self, config: Config, sessions: sessionmaker[Session], notifier: Notifier) -> None:
        self.config = config
        self.sessions = sessions
        self.notifier = notifier
        self.live: dict[int, LiveJob] = {}
        # Re-entrant: an approval that finds its job past the deadline expires it under the same lock.
        self._env_lock = threading.RLock()
        self._busy: dict[str, int] = {}
        self._redactors: dict[str, tuple[tuple[int, float], Redactor, set[bytes]]] = {}
        self._stopping = False
        self.writer = EventWriter(sessions)
        # Pending jobs: the extra vars as launched (secrets unmasked; the database keeps them masked), and
        # the timer that expires each one at its deadline.
        self._held: dict[int, dict[str, Any]] = {}
        self._expiry: dict[int, threading.Timer] = {}

    def marker(self, job_id: int) -> str:
        """What the processes of this console's job carry in JOB_MARKER."""
        return job_marker(self.config.database, job_id)

    # ----- start-up ---------------------------------------------------------------------------

    def recover(self) -> list[int]:
        """Finish the jobs a crashed console left queued or running: stop their processes, mark them
        interrupted, rebuild their grid from the stored events, and remove their run directories."""
        with self.sessions() as db:
            stale = db.scalars(select(Job).where(Job.status.in_(("queued", "running")))).all()
            for job in stale:
                group = job.pgid is not None and kill_process_group(job.pgid, job.process_start)
                killed = kill_job_processes(self.marker(job.id))
                grid = Grid()
                received = 0
                for data in db.scalars(select(JobEvent.data).where(JobEvent.job_id == job.id)
                                       .order_by(JobEvent.counter)):
                    if isinstance(data, dict) and data.get("type") == "hosts":
                        grid.plan(list(data.get("hosts") or []))  # a play's hosts, as it started (_ingest)
                    elif isinstance(data, dict) and isinstance(data.get("event"), dict):
                        grid.apply(data["event"])
                        received += 1
                grid.halt()
                summary = {**grid.snapshot(), "events": received}
                job.status = "interrupted"
                job.finished_at = now()
                job.summary = summary
                job.explanation = "the console stopped while this job ran" + (
                    "; its playbook was still running and was killed" if group or killed else "")
                _record_releases(db, job, summary)
                remove_run_dir(self.config.runs_dir / str(job.id))
            db.commit()
            for job_id, deadline in db.execute(select(Job.id, Job.approval_deadline).where(Job.status == PENDING)):
                self._arm_expiry(job_id, deadline)
            return [j.id for j in stale]

    def shutdown(self, timeout: float = 10.0) -> list[int]:
        """The console is stopping: stop every running job, mark it interrupted, and end every event stream.

        Called as soon as the signal arrives (cli.serve), before the web server waits for open responses:
        a browser's event stream only ends with its job. Calling it again is harmless.
        """
        self._stopping = True
        for timer in list(self._expiry.values()):
            timer.cancel()  # pending jobs stay pending: the next start arms their expiry again
        running = [j for j in list(self.live.values()) if not j.done.is_set()]
        if running:
            log.info("stopping: interrupting job(s) %s", [j.id for j in running])
        for job in running:
            job.canceled_by = "console shutdown"
            job.cancel_requested.set()
            if job.pgid is not None:  # at once, not at runner's next look at the cancel flag
                kill_process_group(job.pgid, job.process_start)
        deadline = time.monotonic() + timeout
        for job in running:
            job.done.wait(max(0.0, deadline - time.monotonic()))
        for job in running:
            if not job.done.is_set():  # stuck: the next start marks it interrupted; the server must not wait
                log.error("job %s did not stop within %.0f s", job.id, timeout)
                job.end_streams()
        return [j.id for j in running]

    # ----- launching --------------------------------------------------------------------------

    def vault_args(self) -> tuple[list[str], dict[str, str]]:
        """ansible-playbook options and pexpect answers that give it the vault password."""
        if self.config.vault_password_file:
            return ["--vault-password-file", str(self.config.vault_password_file)], {}
        if self.config.vault_password_value:
            # Typed at ansible's prompt by runner through the pty: never in a file, argv or environment.
            return ["--ask-vault-pass"], {r"^Vault password:\s*$": self.config.vault_password_value}
        return [], {}

    def vault_password(self) -> str | None:
        if self.config.vault_password_file:
            return self.config.vault_password_file.read_text().strip()
        return self.config.vault_password_value

    def redactor(self, env: Environment, action: Action) -> tuple[Redactor, set[bytes]]:
        """Known secrets for this environment and playbook, and the vault plaintexts they came from.

        Every vaulted file and inline string a play can load lives in the project (playbooks, their vars,
        roles) or the inventory: all of it is read, not only the folders Ansible reads by name, since
        `vars_files`, `include_vars` and role vars may point anywhere in it. What Ansible decrypts
        beyond that, the vault guard refuses (fleetdeploy.console.playbook). Rebuilt when a file there changed.
        """
        roots = [r for r in (self.config.project_dir, env.inventory, action.playbook) if r.exists()]
        skip = [self.config.data_dir]
        files = walk_files(roots, skip)
        stamp = (len(files), max((p.stat().st_mtime for p in files), default=0.0))
        key = f"{env.name}:{action.name}"
        hit = self._redactors.get(key)
        if hit and hit[0] == stamp:
            return hit[1], hit[2]
        values: set[str] = set(self.config.redact_values)
        plaintexts: set[bytes] = set()
        password = self.vault_password()
        if password:
            found = vault_secrets(roots, password, skip)
            values |= found.values
            plaintexts = found.plaintexts
        if self.config.registry and (reg_pw := self.config.registry.password()):
            values.add(reg_pw)
        red = Redactor(values)
        self._redactors[key] = (stamp, red, plaintexts)
        return red, plaintexts

    def busy_job(self, environment: str) -> dict[str, Any] | None:
        job_id = self._busy.get(environment)
        live = self.live.get(job_id) if job_id is not None else None
        return live.brief() if live else None

    def launch(self, env: Environment, action: Action, release: str | None, extra_vars: dict[str, Any],
               user: str, on_created: Callable[[Session, Job], None] | None = None,
               limit: list[str] | None = None, relaunch_of: int | None = None, hold: bool = False,
               options: RunOptions | None = None) -> int:
        """Create the job and start it; raises Busy if the environment already runs one. With `hold`, the
        job waits as pending for approve() instead, until the environment's approval timeout.

        `limit`: the only hosts to run on (`--limit`), host names the caller has checked (service.LIMIT_HOST);
        `options`: the launch's --limit pattern, --check and --diff, checked by service.validate_launch."""
        options = options or RunOptions()
        with self._env_lock:
            if self._stopping:
                raise ShuttingDown("the console is shutting down; launch again once it is back")
            holder = None if hold else self.busy_job(env.name)
            if holder:
                raise Busy(holder)
            secret = secret_extra_vars(extra_vars, action.extra_vars_schema)
            # Stored and served with the secrets masked; the run gets them through a 0600 file, never argv.
            shown = {k: MASK if k in secret else v for k, v in extra_vars.items()}
            created = now()
            deadline = created + dt.timedelta(minutes=env.approval_timeout_minutes) if hold else None
            with self.sessions() as db:
                job = Job(environment=env.name, action=action.name, playbook=str(action.playbook), created_at=created,
                          release=release, service=action.service or extra_vars.get("service"),
                          extra_vars=shown, launched_by=user, status=PENDING if hold else "queued",
                          events_pruned=False, relaunch_of=relaunch_of, limit_hosts=limit,
                          limit_pattern=options.limit, check_mode=options.check, diff_mode=options.diff,
                          approval_deadline=deadline)
                db.add(job)
                db.flush()
                if on_created:
                    on_created(db, job)
                db.commit()
                if hold:
                    self._held[job.id] = extra_vars
                    self._arm_expiry(job.id, deadline)
                    brief = job_dict(job)
                else:
                    return self._start(job, env, action, extra_vars)
        self.notifier.send(brief)
        return brief["id"]

    def held_extra_vars(self, job_id: int) -> dict[str, Any] | None:
        """A pending job's extra vars as launched, secrets included; None once the console restarted."""
        return self._held.get(job_id)

    def approve(self, job_id: int, user: str, env: Environment, action: Action, extra_vars: dict[str, Any],
                on_decided: Callable[[Session, Job], None]) -> int:
        """Start pending job `job_id` as approved by `user`; NotPending when it no longer waits (rejected,
        expired, approved meanwhile), Busy when the environment runs another job (it stays pending)."""
        with self._env_lock:
            if self._stopping:
                raise ShuttingDown("the console is shutting down; approve again once it is back")
            with self.sessions() as db:
                job = self._pending(db, job_id)
                holder = self.busy_job(env.name)
                if holder:
                    raise Busy(holder)
                job.status = "queued"
                job.decided_by = user
                on_decided(db, job)
                db.commit()
                self._forget_held(job_id)
                return self._start(job, env, action, extra_vars)

    def reject(self, job_id: int, user: str, reason: str, on_decided: Callable[[Session, Job], None]) -> None:
        with self._env_lock, self.sessions() as db:
            job = self._pending(db, job_id)
            job.status, job.decided_by, job.finished_at = "rejected", user, now()
            job.explanation = f"rejected by {user}" + (f": {reason}" if reason else "")
            on_decided(db, job)
            db.commit()
            self._forget_held(job_id)
            brief = job_dict(job)
        self.notifier.send(brief)

    def _pending(self, db: Session, job_id: int) -> Job:
        job = db.get(Job, job_id)
        if job is None or job.status != PENDING:
            raise NotPending(f"job {job_id} is {job.status if job else 'gone'}; only a pending job can be approved "
                             "or rejected")
        if job.approval_deadline is not None and job.approval_deadline <= now():
            self._expire(job_id)
            raise NotPending(f"job {job_id} expired at {job.approval_deadline.isoformat(timespec='seconds')} UTC "
                             "without an approval; launch it again")
        return job

    def _arm_expiry(self, job_id: int, deadline: dt.datetime | None) -> None:
        seconds = max(0.0, (deadline - now()).total_seconds()) if deadline else 0.0
        timer = threading.Timer(seconds, self._expire, args=(job_id,))
        timer.daemon = True
        self._expiry[job_id] = timer
        timer.start()

    def _forget_held(self, job_id: int) -> None:
        self._held.pop(job_id, None)
        timer = self._expiry.pop(job_id, None)
        if timer is not None:
            timer.cancel()

    def _expire(self, job_id: int) -> None:
        """The deadline passed with the job still pending: it will not run. The audit log says so. Under the
        lock approvals take, so a job is never both expired and started. A database error tries again a
        minute later rather than leave the job pending."""
        try:
            self._expire_now(job_id)
        except Exception:
            log.exception("expiring pending job %s failed; trying again in 60 s", job_id)
            if not self._stopping:
                self._arm_expiry(job_id, now() + dt.timedelta(seconds=60))

    def _expire_now(self, job_id: int) -> None:
        with self._env_lock, self.sessions() as db:
            job = db.get(Job, job_id)
            if job is None or job.status != PENDING:
                return
            minutes = (job.approval_deadline - job.created_at).total_seconds() / 60 if job.approval_deadline else 0
            job.status, job.finished_at = "expired", now()
            job.explanation = f"no one approved it within {minutes:g} minutes"
            db.add(AuditEntry(actor="console", action="job_expire", target=f"job {job_id}",
                              detail={"environment": job.environment, "action": job.action, "release": job.release}))
            db.commit()
            brief = job_dict(job)
        self._forget_held(job_id)
        self.notifier.send(brief)

    def _start(self, job: Job, env: Environment, action: Action, extra_vars: dict[str, Any]) -> int:
        """Run a queued job (called under _env_lock, the environment free), on the hosts and with the
        options it records."""
        live = LiveJob(id=job.id, environment=env.name, action=action.name, release=job.release,
                       launched_by=job.launched_by, created_at=job.created_at, check=job.check_mode)
        self.live[live.id] = live
        self._busy[env.name] = live.id
        secret = secret_extra_vars(extra_vars, action.extra_vars_schema)
        secret_values = {v for k in secret for v in scalars(extra_vars[k])}
        # A retry's host names, else the launch's pattern: a retry's hosts are within the pattern it retries.
        limit = ",".join(job.limit_hosts) if job.limit_hosts else job.limit_pattern
        flags = [*(["--check"] if job.check_mode else []), *(["--diff"] if job.diff_mode else [])]
        threading.Thread(target=self._supervise, args=(live, env, action, extra_vars, secret_values, limit, flags),
                         name=f"job-{live.id}", daemon=True).start()
        return live.id

    def cancel(self, job_id: int, user: str) -> bool:
        live = self.live.get(job_id)
        if not live or live.status in FINAL:
            return False
        live.canceled_by = user
        live.cancel_requested.set()
        live.publish({"type": "status", "status": "canceling", "by": user})
        return True

    # ----- one job ----------------------------------------------------------------------------

    def _supervise(self, live: LiveJob, env: Environment, action: Action, extra_vars: dict[str, Any],
                   secret_values: set[str], limit: str | None = None, flags: list[str] | None = None) -> None:
        run_dir = self.config.runs_dir / str(live.id)
        ingester = threading.Thread(target=self._ingest, args=(live,), name=f"ingest-{live.id}", daemon=True)
        status, rc, explanation = "error", None, None
        try:
            run_dir.mkdir(parents=True, mode=0o700, exist_ok=True)
            redactor, plaintexts = self.redactor(env, action)
            live.redactor = redactor.extended(secret_values)
            ingester.start()
            vault_cmd, passwords = self.vault_args()
            # runner 2.4 reads its settings from env/settings only; nothing secret is in them.
            (run_dir / "env").mkdir(mode=0o700, exist_ok=True)
            (run_dir / "env" / "settings").write_text(json.dumps(RUNNER_SETTINGS))
            extravars_file = run_dir / "env" / "extravars"
            if extra_vars:
                # runner passes this file as `-e @file`: the values stay off every command line (ps).
                _write_private(extravars_file, json.dumps(extra_vars).encode())
            # The venv's ansible-playbook first, whatever PATH the console was started with.
            envvars = {**self.config.envvars, JOB_MARKER: self.marker(live.id), "ANSIBLE_FORCE_COLOR": "1",
                       "ANSIBLE_NOCOLOR": "0", "PYTHONUNBUFFERED": "1",
                       "PATH": f"{BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}",
                       # Who the release records and the deploy lock name (playbooks/vars/roll.yml).
                       "FLEETDEPLOY_ACTOR": f"console:{live.launched_by}"}
            if self.config.ansible_config:
                envvars["ANSIBLE_CONFIG"] = str(self.config.ansible_config)
            envvars["ANSIBLE_HOST_KEY_CHECKING"] = host_key_checking(
                Path(envvars.get("ANSIBLE_CONFIG") or os.environ.get("ANSIBLE_CONFIG")
                     or Path(self.config.project_dir) / "ansible.cfg"), {**os.environ, **envvars})
            if vault_cmd:
                # The playbook may decrypt only what the redactor knows (fleetdeploy.console.playbook).
                write_known(run_dir / "vault-known", plaintexts)
                envvars[KNOWN_ENV] = str(run_dir / "vault-known")
            if live.cancel_requested.is_set():
                raise _Canceled()
            self._set_status(live, "running")
            self.notifier.send(self._brief_for_notify(live))

            def event_handler(event: dict[str, Any]) -> bool:
                live.events.put(event)
                return False  # nothing written to job_events/: the console keeps the redacted copy

            def status_handler(data: dict[str, Any], runner_config: Any = None) -> None:
                # data["env"] on "starting" holds the whole environment: read the status only.
                live.events.put({"_status": data.get("status")})

            thread, runner = ansible_runner.run_async(
                private_data_dir=str(run_dir),
                project_dir=str(self.config.project_dir),
                # ansible-playbook behind the vault guard, from this venv: `python -m fleetdeploy.console.playbook`.
                binary=sys.executable,
                cmdline=shlex.join(["-m", PLAYBOOK_MODULE, *vault_cmd, *(flags or []), str(action.playbook)]),
                inventory=str(env.inventory),
                # One argv item after --limit: checked host names, or a pattern of service.LIMIT_PATTERN (no @file).
                limit=limit or None,
                envvars=envvars,
                passwords=passwords or None,
                suppress_output_file=True,
                suppress_env_files=True,
                # Runner's "jsonfile" default points the fact cache into the run directory, which goes at the
                # job's end: every job gathered every host's facts again. Any other value leaves the cache to
                # Ansible's own settings (ansible.cfg, envvars), as for ansible-playbook.
                fact_cache_type=_FACT_CACHE_FROM_ANSIBLE,
                quiet=True,
                ident="run",
                event_handler=event_handler,
                status_handler=status_handler,
                cancel_callback=live.cancel_requested.is_set,
            )
            command_file = run_dir / "artifacts" / "run" / "command"
            leader: int | None = None
            while thread.is_alive():
                thread.join(0.1)
                if leader is None:
                    leader = self._note_process_group(live)
                    # runner's "command" artifact is a copy of the whole environment: gone as soon as written.
                    command_file.unlink(missing_ok=True)
            rc = runner.rc
            status = {"successful": "successful", "canceled": "canceled", "timeout": "failed"}.get(
                runner.status, "failed")
            if live.cancel_requested.is_set():
                status = "canceled"
        except _Canceled:
            status = "canceled"
        except Exception as exc:  # a job must always end in a final state
            log.exception("job %s could not run", live.id)
            explanation = f"the console could not run the playbook: {type(exc).__name__}: {exc}"
        finally:
            survivors = kill_job_processes(self.marker(live.id))
            remove_run_dir(run_dir)
            if survivors:
                log.info("job %s: killed %d leftover process(es)", live.id, len(survivors))
            live.events.put(_END)
            if ingester.is_alive():
                ingester.join()
            # Every event stored before the job reads as finished: a reader of a final job gets them all.
            self.writer.drain()
            self._finish(live, status, rc, explanation)

    def _note_process_group(self, live: LiveJob) -> int | None:
        """Find the playbook's process (runner's pexpect child: our child, leader of its own group) and record
        its group and identity, so that a console restarted after a crash can stop it; None until it runs."""
        me = os.getpid()
        for pid in job_processes(self.marker(live.id)):
            fields = _stat(pid)
            if fields and int(fields[1]) == me and int(fields[2]) == pid:
                identity = process_identity(pid)
                live.pgid, live.process_start = pid, identity
                with self.sessions() as db:
                    db.execute(update(Job).where(Job.id == live.id).values(pgid=pid, process_start=identity))
                    db.commit()
                return pid
        return None

    def _brief_for_notify(self, live: LiveJob) -> dict[str, Any]:
        return live.brief()

    def _ingest(self, live: LiveJob) -> None:
        """Drain the runner's queue in order: redact, fold into the grid, fan out, hand to the database writer."""
        redactor = live.redactor
        while True:
            item = live.events.get()
            if item is _END:
                break
            if "_status" in item or _is_prompt(item):
                continue
            hosts = _announced_hosts(item)
            if hosts is not None:
                with live.lock:
                    live.grid.plan(hosts)
                msg = {"type": "hosts", "id": item.get("counter") or 0, "hosts": hosts}
                live.publish(msg)
                # Stored like an event, so that a console restarted after a crash lists the hosts too (recover).
                self.writer.put({"job_id": live.id, "counter": msg["id"], "event": "verbose", "host": None,
                                 "created": item.get("created"), "data": msg})
                continue
            try:
                ev = slim_event(item, redactor)
                with live.lock:
                    change = live.grid.apply(ev)
            except Exception:  # one odd event must not stop the job's stream
                log.exception("job %s: could not read event %s", live.id, item.get("counter"))
                continue
            live.received += 1
            msg = {"type": "event", "id": ev["counter"], "event": ev, **change}
            live.publish(msg)
            self.writer.put({"job_id": live.id, "counter": ev["counter"] or 0, "event": ev["event"] or "",
                             "host": ev["event_data"].get("host"), "created": ev.get("created"), "data": msg})

    def _set_status(self, live: LiveJob, status: str) -> None:
        live.status = status
        with self.sessions() as db:
            values: dict[str, Any] = {"status": status}
            if status == "running":
                live.started_at = now()
                values["started_at"] = live.started_at
            db.execute(update(Job).where(Job.id == live.id).values(**values))
            db.commit()
        live.publish({"type": "status", "status": status})

    def _finish(self, live: LiveJob, status: str, rc: int | None, explanation: str | None) -> None:
        if self._stopping and status == "canceled" and live.canceled_by == "console shutdown":
            status, explanation = "interrupted", "the console was stopped while this job ran"
        with live.lock:
            halted = live.grid.halt()
            summary = live.grid.snapshot()
        summary["events"] = live.received
        with self.sessions() as db:
            job = db.get(Job, live.id)
            assert job is not None
            job.status = status
            job.rc = rc
            job.finished_at = now()
            job.summary = summary
            job.canceled_by = live.canceled_by if status == "canceled" else None
            job.explanation = explanation or ({"canceled": f"canceled by {live.canceled_by}"}.get(status))
            _record_releases(db, job, summary)
            db.commit()
            brief = job_dict(job)
        live.status = status
        live.publish({"type": "status", "status": status, "rc": rc, "explanation": brief["explanation"],
                      "recap": summary["recap"], "results": summary["results"], "cells": halted})
        live.publish({"type": "end"})
        with self._env_lock:
            if self._busy.get(live.environment) == live.id:
                del self._busy[live.environment]
        live.done.set()
        live.end_streams()
        self.notifier.send(brief)
        if self._stopping:
            log.info("job %s ended %s", live.id, status)
            return  # no pruning and no timer: the process is about to exit
        try:
            self.prune()
        except Exception:
            log.exception("pruning old jobs failed")
        # Keep the finished job in memory briefly so late subscribers still get the live stream.
        forget = threading.Timer(60.0, self.live.pop, args=(live.id, None))
        forget.daemon = True
        forget.start()

    # ----- retention --------------------------------------------------------------------------

    def prune(self) -> list[int]:
        """Drop events and artifacts of jobs older than N days or beyond the newest N jobs."""
        cutoff = now() - dt.timedelta(days=self.config.retention_days)
        with self.sessions() as db:
            keep = db.scalars(select(Job.id).order_by(Job.id.desc()).limit(self.config.retention_jobs)).all()
            floor = min(keep) if len(keep) >= self.config.retention_jobs else 0
            old = db.scalars(
                select(Job.id).where(Job.events_pruned.is_(False), Job.status.in_(FINAL),
                                     (Job.created_at < cutoff) | (Job.id < floor))
            ).all()
            if not old:
                return []
            db.execute(delete(JobEvent).where(JobEvent.job_id.in_(old)))
            db.execute(update(Job).where(Job.id.in_(old)).values(events_pruned=True))
            db.commit()
        for job_id in old:
            shutil.rmtree(self.config.runs_dir / str(job_id), ignore_errors=True)
        return list(old)


def _record_releases(db: Session, job: Job, summary: dict[str, Any]) -> None:
    """What each host said it serves, whatever the job's outcome (a failed swap reports the old release).
    A job in check mode changed nothing, whatever its plays reported."""
    if job.check_mode:
        return
    for host, services in summary["releases"].items():
        for service, release in services.items():
            db.merge(Release(environment=job.environment, service=service, host=host,
                             release=release, job_id=job.id, updated_at=now()))


def _write_private(path: Path, data: bytes) -> None:
    """Write a file only the console's user can read, created so from the start (no window at 0644)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _announced_hosts(event: dict[str, Any]) -> list[str] | None:
    """The hosts a play will run on, if this is the line fleetdeploy.console.playbook prints as the play starts."""
    if event.get("event") != "verbose":
        return None
    line = (event.get("stdout") or "").strip()
    if not line.startswith(HOSTS_PREFIX):
        return None
    try:
        hosts = json.loads(line[len(HOSTS_PREFIX):])
    except ValueError:
        return None
    return [str(h) for h in hosts] if isinstance(hosts, list) else None


def _is_prompt(event: dict[str, Any]) -> bool:
    """The vault prompt that runner answers echoes into the output: noise, not an event."""
    return event.get("event") == "verbose" and (event.get("stdout") or "").strip() == "Vault password:"


class _Canceled(Exception):
    pass
