"""Running playbooks: one ansible-runner job per launch, events fanned out to the database and browsers.

Threads per job: ansible-runner's own (reads the playbook's output and calls event_handler), the
ingester (redacts, folds into the grid, fans out to the browsers from memory, hands to the writer)
and the supervisor (starts the run, waits for it, drains the writer, finishes the job). One writer
thread for all jobs (runner.writer.EventWriter) stores the events in batches. event_handler only puts on a
queue: neither the database nor a browser can hold up the playbook. The hosts each play will touch come
in the output itself (runner.playbook.HOSTS_PREFIX), so the grid shows them as pending from the play's start.
"""

from __future__ import annotations

import configparser
import datetime as dt
import json
import logging
import os
import shlex
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import ansible_runner
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from fleetdeploy.console.config import Action, Config, Environment
from fleetdeploy.console.db import Job, JobEvent, Release, job_dict, now
from fleetdeploy.console.redact import MASK, Redactor, scalars, secret_extra_vars, vault_secrets, walk_files
from fleetdeploy.console.runner.events import announced_hosts, is_prompt, slim_event
from fleetdeploy.console.runner.grid import Grid
from fleetdeploy.console.runner.live import END, LiveJob
from fleetdeploy.console.runner.notify import Notifier
from fleetdeploy.console.runner.playbook import KNOWN_ENV, write_known
from fleetdeploy.console.runner.process import (
    JOB_MARKER,
    job_marker,
    job_processes,
    kill_job_processes,
    kill_process_group,
    proc_stat,
    process_identity,
)
from fleetdeploy.console.runner.writer import EventWriter
from fleetdeploy.console.status import (
    ACTIVE,
    CANCELED,
    ERROR,
    EXPIRED,
    FAILED,
    FINAL,
    INTERRUPTED,
    PENDING,
    QUEUED,
    REJECTED,
    RUNNING,
    SUCCESSFUL,
)

log = logging.getLogger(__name__)

BIN_DIR = os.path.dirname(sys.executable)
PLAYBOOK_MODULE = "fleetdeploy.console.runner.playbook"
# pexpect_timeout: how often runner checks cancel_callback while the playbook is quiet.
RUNNER_SETTINGS = {"suppress_output_file": True, "suppress_ansible_output": True, "pexpect_timeout": 0.25,
                   "pexpect_use_poll": True}
# Not "jsonfile": runner then leaves the fact cache settings alone (see _supervise).
_FACT_CACHE_FROM_ANSIBLE = "ansible"


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
    """A launch's options for ansible-playbook (config.LAUNCH_OPTIONS), checked by domain.launch."""

    limit: str | None = None
    check: bool = False
    diff: bool = False


class NotPending(Exception):
    """An approval or rejection of a job that no longer waits for one; the message says what it is now."""


class ShuttingDown(Exception):
    """The console is stopping and takes no new job."""


class TooManyPending(Exception):
    """The environment already has as many jobs waiting for an approval as its config allows."""


class Busy(Exception):
    """Another job holds the environment."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.job = job
        super().__init__(
            f"environment {job['environment']} is busy: {job['launched_by']} is running "
            f"{job['action']}{' of ' + job['release'] if job.get('release') else ''} (job {job['id']}, "
            f"started {job['started_at'] or job['created_at']})"
        )


def remove_run_dir(run_dir: Path) -> None:
    """A job's private data dir holds nothing the database lacks, and may hold its environment
    (runner's `command` artifact) and its extra vars: gone at every end of the job."""
    shutil.rmtree(run_dir, ignore_errors=True)


class JobManager:
    def __init__(self, config: Config, sessions: sessionmaker[Session], notifier: Notifier,
                 on_expired: Callable[[Session, Job], None] | None = None) -> None:
        self.config = config
        self.sessions = sessions
        self.notifier = notifier
        # Called with a pending job that expires, in the transaction that expires it (the domain audits it).
        self.on_expired = on_expired
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
            stale = db.scalars(select(Job).where(Job.status.in_(ACTIVE))).all()
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
                job.status = INTERRUPTED
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

        Called as soon as the signal arrives (server.py, through Console.stop), before the web server waits
        for open responses: a browser's event stream only ends with its job. Calling it again is harmless.
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
        beyond that, the vault guard refuses (fleetdeploy.console.runner.playbook). Rebuilt when a file there changed.
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

        `limit`: the only hosts to run on (`--limit`), host names the caller has checked (domain.launch.LIMIT_HOST);
        `options`: the launch's --limit pattern, --check and --diff, checked by domain.launch."""
        options = options or RunOptions()
        with self._env_lock:
            if self._stopping:
                raise ShuttingDown("the console is shutting down; launch again once it is back")
            holder = None if hold else self.busy_job(env.name)
            if holder:
                raise Busy(holder)
            if hold:
                # Each pending job keeps its extra vars, secrets included, in memory until it is decided.
                with self.sessions() as db:
                    waiting = db.scalar(select(func.count()).select_from(Job)
                                        .where(Job.environment == env.name, Job.status == PENDING)) or 0
                if waiting >= env.approval_max_pending:
                    raise TooManyPending(f"environment {env.name} already has {waiting} jobs waiting for an approval "
                                         f"(approval.max_pending); approve or reject one first")
            secret = secret_extra_vars(extra_vars, action.extra_vars_schema)
            # Stored and served with the secrets masked; the run gets them through a 0600 file, never argv.
            shown = {k: MASK if k in secret else v for k, v in extra_vars.items()}
            created = now()
            deadline = created + dt.timedelta(minutes=env.approval_timeout_minutes) if hold else None
            with self.sessions() as db:
                job = Job(environment=env.name, action=action.name, playbook=str(action.playbook), created_at=created,
                          release=release, service=action.service or extra_vars.get("service"),
                          extra_vars=shown, launched_by=user, status=PENDING if hold else QUEUED,
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
                job.status = QUEUED
                job.decided_by = user
                on_decided(db, job)
                db.commit()
                self._forget_held(job_id)
                return self._start(job, env, action, extra_vars)

    def reject(self, job_id: int, user: str, reason: str, on_decided: Callable[[Session, Job], None]) -> None:
        with self._env_lock, self.sessions() as db:
            job = self._pending(db, job_id)
            job.status, job.decided_by, job.finished_at = REJECTED, user, now()
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
            job.status, job.finished_at = EXPIRED, now()
            job.explanation = f"no one approved it within {minutes:g} minutes"
            if self.on_expired:
                self.on_expired(db, job)
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
        status, rc, explanation = ERROR, None, None
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
                # The playbook may decrypt only what the redactor knows (fleetdeploy.console.runner.playbook).
                write_known(run_dir / "vault-known", plaintexts)
                envvars[KNOWN_ENV] = str(run_dir / "vault-known")
            if live.cancel_requested.is_set():
                raise _Canceled()
            self._set_status(live, RUNNING)
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
                # ansible-playbook behind the vault guard, from this venv: `python -m PLAYBOOK_MODULE`.
                binary=sys.executable,
                cmdline=shlex.join(["-m", PLAYBOOK_MODULE, *vault_cmd, *(flags or []), str(action.playbook)]),
                inventory=str(env.inventory),
                # One argv item after --limit: checked host names, or a domain.launch.LIMIT_PATTERN (no @file).
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
            # ansible-runner's own statuses, in ours.
            status = {"successful": SUCCESSFUL, "canceled": CANCELED, "timeout": FAILED}.get(runner.status, FAILED)
            if live.cancel_requested.is_set():
                status = CANCELED
        except _Canceled:
            status = CANCELED
        except Exception as exc:  # a job must always end in a final state
            log.exception("job %s could not run", live.id)
            explanation = f"the console could not run the playbook: {type(exc).__name__}: {exc}"
        finally:
            survivors = kill_job_processes(self.marker(live.id))
            remove_run_dir(run_dir)
            if survivors:
                log.info("job %s: killed %d leftover process(es)", live.id, len(survivors))
            live.events.put(END)
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
            fields = proc_stat(pid)
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
            if item is END:
                break
            if "_status" in item or is_prompt(item):
                continue
            hosts = announced_hosts(item)
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
            if status == RUNNING:
                live.started_at = now()
                values["started_at"] = live.started_at
            db.execute(update(Job).where(Job.id == live.id).values(**values))
            db.commit()
        live.publish({"type": "status", "status": status})

    def _finish(self, live: LiveJob, status: str, rc: int | None, explanation: str | None) -> None:
        if self._stopping and status == CANCELED and live.canceled_by == "console shutdown":
            status, explanation = INTERRUPTED, "the console was stopped while this job ran"
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
            job.canceled_by = live.canceled_by if status == CANCELED else None
            job.explanation = explanation or ({CANCELED: f"canceled by {live.canceled_by}"}.get(status))
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


class _Canceled(Exception):
    pass
