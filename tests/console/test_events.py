"""The path of a job's events, in process (a JobManager, no web server): a real ansible-runner job on the
fixture playbooks, and a database that lags behind. Neither may hold up the playbook or its watchers, and no
event may be lost, reordered, or missing when the job reads as finished."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from conftest import FIXTURES
from fleetdeploy.console.config import Config, load
from fleetdeploy.console.db import Job, JobEvent, make_engine, migrate, session_factory
from fleetdeploy.console.runner.live import LiveJob
from fleetdeploy.console.runner.manager import JobManager
from fleetdeploy.console.runner.notify import Notifier
from fleetdeploy.console.runner.writer import EventWriter


def console(tmp_path: Path, ansible_config: Path = FIXTURES / "ansible.cfg") -> tuple[Config, sessionmaker[Session], JobManager]:
    config = tmp_path / "console.yml"
    config.write_text(json.dumps({
        "project_dir": str(FIXTURES), "data_dir": str(tmp_path / "data"),
        "ansible_config": str(ansible_config),
        # A fact cache that outlives the job, as the console role sets it (ansible.cfg sets the plugin).
        "envvars": {"ANSIBLE_CACHE_PLUGIN": "jsonfile", "ANSIBLE_CACHE_PLUGIN_CONNECTION": str(tmp_path / "facts")},
        "vault": {"password_file": str(FIXTURES / "vault-password")},
        "environments": {"fleet": {"inventory": "inventories/fleet"}},
        "actions": {"deploy": {"playbook": "playbooks/deploy.yml", "release": {"variable": "release"}},
                    "flood": {"playbook": "playbooks/flood.yml"}, "facts": {"playbook": "playbooks/facts.yml"}},
    }))
    cfg = load(config)
    migrate(cfg.database)
    sessions = session_factory(make_engine(cfg.database))
    return cfg, sessions, JobManager(cfg, sessions, Notifier(None))


def wait_until(check: Callable[[], bool], what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.05)


def streamed(live: LiveJob) -> list[dict[str, Any]]:
    """What the job's watchers get of the playbook's output (its in-memory messages): events, and hosts lists."""
    with live.lock:
        return [m for m in live.messages if m["type"] in ("event", "hosts")]


def events(live: LiveJob) -> list[dict[str, Any]]:
    return [m for m in streamed(live) if m["type"] == "event"]


def stored(sessions: sessionmaker[Session], job_id: int) -> list[int]:
    """The counters of the job's stored events, in the order they were written."""
    with sessions() as db:
        return list(db.scalars(select(JobEvent.counter).where(JobEvent.job_id == job_id).order_by(JobEvent.id)))


def status(sessions: sessionmaker[Session], job_id: int) -> str:
    with sessions() as db:
        job = db.get(Job, job_id)
        assert job is not None
        return job.status


def test_a_locked_database_holds_up_neither_the_playbook_nor_its_watchers_and_loses_no_event(tmp_path: Path) -> None:
    cfg, sessions, jobs = console(tmp_path)
    # 600 items on six hosts: more events than one of the writer's batches holds.
    job_id = jobs.launch(cfg.environments["fleet"], cfg.actions["flood"], None, {"flood_items": 100}, "tester")
    live = jobs.live[job_id]

    def recorded_process_group() -> bool:
        with sessions() as db:
            job = db.get(Job, job_id)
            return job is not None and job.pgid is not None
    wait_until(recorded_process_group, "the job records its playbook's process group")

    # Another process's write transaction: every write of the console waits behind it (busy_timeout).
    locker = sqlite3.connect(cfg.database.split("///", 1)[1], timeout=60, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    try:
        wait_until(lambda: any(m["event"]["event"] == "playbook_on_stats" for m in events(live)),
                   "the playbook's last event reaches the watchers while the database is locked")
        assert live.status == "running" and not live.done.is_set()
        assert len(stored(sessions, job_id)) < live.received  # the lock did hold events back
    finally:
        locker.execute("ROLLBACK")
        locker.close()

    assert live.done.wait(180), "the job did not end once the database was free"
    counters = stored(sessions, job_id)
    # Every event runner counted, once, in the order the playbook emitted them, as the watchers saw them.
    assert counters == list(range(1, len(counters) + 1))
    assert counters == [m["id"] for m in streamed(live)]
    assert len(events(live)) == live.received
    assert sum(m["event"]["event"] == "runner_item_on_ok" for m in events(live)) == 6 * 100
    assert status(sessions, job_id) == "successful"


class HeldWriter(EventWriter):
    """A writer whose database writes wait until `release` is set; tells when a job waits for it to drain."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        super().__init__(sessions)
        self.release = threading.Event()
        self.draining = threading.Event()

    def _write(self, rows: list[dict[str, Any]]) -> None:
        self.release.wait()
        super()._write(rows)

    def drain(self, timeout: float | None = None) -> bool:
        self.draining.set()
        return super().drain(timeout)


def test_a_job_reads_as_finished_only_once_all_its_events_are_stored(tmp_path: Path) -> None:
    cfg, sessions, jobs = console(tmp_path)
    writer = jobs.writer = HeldWriter(sessions)
    job_id = jobs.launch(cfg.environments["fleet"], cfg.actions["deploy"], "v1", {"release": "v1", "fixture_step": 0},
                          "tester")
    live = jobs.live[job_id]

    wait_until(writer.draining.is_set, "the playbook ends and its job waits for the writer")
    assert any(m["event"]["event"] == "playbook_on_stats" for m in events(live))
    assert stored(sessions, job_id) == []
    assert status(sessions, job_id) == "running" and live.status == "running" and not live.done.is_set()

    writer.release.set()
    assert live.done.wait(180), "the job did not end once the writer went on"
    assert status(sessions, job_id) == "successful"
    counters = stored(sessions, job_id)
    assert counters == [m["id"] for m in streamed(live)] == list(range(1, len(counters) + 1))
    # The play's hosts, every batch of them, came with the output before the first batch started.
    hosts = [f"web{i}" for i in range(1, 7)]
    assert [m["hosts"] for m in streamed(live) if m["type"] == "hosts"] == [hosts]
    with sessions() as db:
        job = db.get(Job, job_id)
        assert job is not None and job.summary is not None
        assert job.summary["hosts"] == hosts


def test_facts_go_to_the_fact_cache_ansible_is_set_to_use_not_into_the_run_directory(tmp_path: Path) -> None:
    """Cached facts outlive the job (ansible-runner's own default would put them in the run directory, deleted
    at the job's end, and every deploy would gather every host's facts again)."""
    cfg, sessions, jobs = console(tmp_path)
    job_id = jobs.launch(cfg.environments["fleet"], cfg.actions["facts"], None, {}, "tester")
    assert jobs.live[job_id].done.wait(180)
    assert status(sessions, job_id) == "successful"
    # One file per host (ansible-core 2.19 names it s1_<host> and wraps the facts in a payload).
    cached = [f.read_text() for f in (tmp_path / "facts").glob("*web1")]
    assert len(cached) == 1 and "fixture_cached_fact" in cached[0]


def test_a_job_checks_host_keys_as_its_ansible_cfg_says(tmp_path: Path) -> None:
    """ansible-runner sets ANSIBLE_HOST_KEY_CHECKING=False for every run that does not set it; the console's
    jobs must check host keys as ansible-playbook would with the same ansible.cfg (the project's says True)."""
    ansible_cfg = tmp_path / "ansible.cfg"
    ansible_cfg.write_text((FIXTURES / "ansible.cfg").read_text().replace("host_key_checking = False",
                                                                           "host_key_checking = True"))
    cfg, sessions, jobs = console(tmp_path, ansible_cfg)
    job_id = jobs.launch(cfg.environments["fleet"], cfg.actions["facts"], None, {}, "tester")
    assert jobs.live[job_id].done.wait(180)
    assert status(sessions, job_id) == "successful"
    # ansible-core 2.19 wraps the cached facts, as JSON text, in a payload.
    cached = [json.loads(json.loads(f.read_text())["__payload__"]) for f in (tmp_path / "facts").glob("*web1")]
    assert len(cached) == 1 and cached[0]["fixture_host_key_checking"] is True, cached
