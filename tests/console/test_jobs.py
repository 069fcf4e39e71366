"""Jobs through the API: the grid, the recap, locks per environment, cancel, restarts, notifications."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path
from typing import Any

import httpx

from conftest import (Client, Server, cli, job_processes, process_environ, start_server, wait_for_long_task,
                      write_config)
from sqlalchemy import text

from fleetdeploy.console.db import make_engine


def test_deploy_fills_the_grid_batch_by_batch_and_ends_green(finished: dict[str, dict[str, Any]]) -> None:
    job = finished["fleet"]
    assert job["status"] == "successful", job
    assert job["rc"] == 0
    hosts = [f"web{i}" for i in range(1, 7)]
    assert sorted(job["hosts"]) == hosts
    assert set(job["hosts"].values()) == {"changed"}
    # serial: 2 over six hosts is three batches of one play: three columns, numbered 1..3.
    columns = job["grid"]["columns"]
    assert [c["batch"] for c in columns] == [1, 2, 3]
    assert len({c["play"] for c in columns}) == 1
    cells = {(c["host"], c["col"]): c for c in job["grid"]["cells"]}
    for col in range(3):
        batch = [h for (h, c) in cells if c == col]
        assert len(batch) == 2, (col, batch)
    assert all(not c["running"] for c in cells.values())
    assert job["recap"]["web1"]["changed"] == 1 and job["recap"]["web1"]["failures"] == 0


def test_unreachable_is_told_apart_from_failed(finished: dict[str, dict[str, Any]]) -> None:
    job = finished["broken"]
    assert job["status"] == "failed"
    assert job["hosts"] == {"good1": "changed", "bad1": "failed", "ghost1": "unreachable"}
    assert job["recap"]["ghost1"]["dark"] == 1
    assert job["recap"]["bad1"]["failures"] == 1


def test_stream_replays_events_with_grid_changes(ci: Client, finished: dict[str, dict[str, Any]]) -> None:
    msgs = ci.events(finished["fleet"]["id"])
    assert msgs[0]["type"] == "snapshot"
    events = [m for m in msgs if m["type"] == "event"]
    counters = [m["id"] for m in events]
    assert counters == sorted(counters) and len(counters) == len(set(counters))
    assert any(m.get("cell", {}).get("running") for m in events), "no cell was ever shown running a task"
    assert any("now runs v1.2.0" in m["event"]["stdout"] for m in events)
    assert msgs[-1]["type"] == "end"
    # Resuming after a given event sends only what came after it.
    tail = ci.http.get(f"/api/jobs/{finished['fleet']['id']}/events", headers={"Last-Event-ID": str(counters[-3])})
    assert tail.text.count("\nid: ") + tail.text.startswith("id: ") == 2


def test_dashboard_shows_the_release_per_host(admin: Client, finished: dict[str, dict[str, Any]]) -> None:
    page = admin.get("/").text
    fleet = page[page.index('id="env-fleet"'):page.index('id="env-broken"')]
    for i in range(1, 7):
        assert re.search(rf"<td>web</td><td>web{i}</td><td class=\"release\">v1\.2\.0</td>", fleet), fleet
    # Each host shows what it reported: the healthy host of the failed deploy moved; the host whose
    # deploy failed and the unreachable one reported nothing, so they show no release.
    broken = page[page.index('id="env-broken"'):].split("</section>")[0]
    assert re.search(r"<td>web</td><td>good1</td><td class=\"release\">v1\.2\.0</td>", broken), broken
    assert "bad1" not in broken and "ghost1" not in broken, broken


def test_one_job_per_environment_and_side_by_side_across_environments(ci: Client, admin: Client) -> None:
    first = ci.launch("fleet", action="soak", release=None)
    try:
        refused = ci.post("/api/jobs", json={"environment": "fleet", "action": "deploy", "release": "v1.3.0"})
        assert refused.status_code == 409
        detail = refused.json()["detail"]
        assert "token:ci" in detail and "soak" in detail and f"job {first}" in detail
        other = ci.launch("staging", action="soak", release=None)
        assert ci.get(f"/api/jobs/{other}").json()["status"] in ("queued", "running")
        assert admin.post(f"/api/jobs/{other}/cancel").status_code == 200
    finally:
        ci.post(f"/api/jobs/{first}/cancel")
    ci.wait(first)
    ci.wait(other)


def test_cancel_stops_the_whole_process_group(ci: Client) -> None:
    launched = time.monotonic()  # the job's `sleep 90` starts later, so it cannot end by itself before launched + 90
    job_id = ci.launch("fleet", action="soak", release=None)
    # Wait until the sleep task is running on the hosts.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        cells = ci.get(f"/api/jobs/{job_id}").json()["grid"]["cells"]
        if any(c["running"] for c in cells):
            break
        time.sleep(0.2)
    else:
        raise AssertionError("the long task never started")
    wait_for_long_task(ci.server.config, job_id, timeout=deadline - time.monotonic())
    # serve dropped the secret-bearing variables once read: the playbook's processes never see them.
    from conftest import SECRETS

    for pid in job_processes(ci.server.config, job_id):
        environ = process_environ(pid)
        assert b"TEST_CONSOLE_" not in environ
        assert not any(v.encode() in environ for v in SECRETS.values())
    r = ci.post(f"/api/jobs/{job_id}/cancel")
    assert r.status_code == 200, r.text
    job = ci.wait(job_id, timeout=90)
    ended = time.monotonic()
    assert job["status"] == "canceled"
    assert job["canceled_by"] == "token:ci"
    # The cancel killed the sleep: waiting for it would have ended the job 90 s or more after its launch.
    assert ended - launched < 90, f"the job ended {ended - launched:.1f} s after its launch, as if its sleep ran out"
    assert job_processes(ci.server.config, job_id) == [], "processes of the canceled job survived"
    again = ci.post(f"/api/jobs/{job_id}/cancel")
    assert again.status_code == 409


def test_a_console_restart_marks_running_jobs_interrupted(tmp_path: Path, registry: Any) -> None:
    config = write_config(tmp_path, registry.url, None)
    done = cli(config, "create-user", "ops", "--role", "deployer", "--password-stdin", stdin="ops-password-1234\n")
    assert done.returncode == 0, done.stderr
    token = cli(config, "create-token", "ops", "--role", "deployer").stdout.strip()
    first = start_server(tmp_path, config)
    try:
        api = httpx.Client(base_url=first.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        job_id = api.post("/api/jobs", json={"environment": "fleet", "action": "soak"}).json()["id"]
        wait_for_long_task(config, job_id)
    finally:
        first.stop(signal.SIGKILL)  # a crash: no shutdown code runs
    second = start_server(tmp_path, config)
    try:
        api = httpx.Client(base_url=second.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        job = api.get(f"/api/jobs/{job_id}").json()
        assert job["status"] == "interrupted"
        assert "console stopped" in job["explanation"]
        assert job_processes(config, job_id) == []
        # The environment is free again.
        nxt = api.post("/api/jobs", json={"environment": "fleet", "action": "soak"})
        assert nxt.status_code == 201, nxt.text
        nxt_id = nxt.json()["id"]
        wait_for_long_task(config, nxt_id)
    finally:
        second.stop()  # SIGTERM: a clean stop interrupts its jobs itself
    assert job_processes(config, nxt_id) == []
    with make_engine(f"sqlite:///{tmp_path / 'data' / 'console.db'}").connect() as conn:
        status, explanation = conn.execute(text("SELECT status, explanation FROM jobs WHERE id = :i"),
                                           {"i": nxt_id}).one()
    assert status == "interrupted" and "stopped" in explanation


def test_notifications_on_start_and_finish(webhook: tuple[str, list[dict[str, Any]]],
                                            finished: dict[str, dict[str, Any]]) -> None:
    _, received = webhook
    job_id = finished["fleet"]["id"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        mine = [m for m in received if m["fleetdeploy"]["id"] == job_id]
        if len(mine) >= 2:
            break
        time.sleep(0.1)
    statuses = [m["fleetdeploy"]["status"] for m in mine]
    assert statuses == ["running", "successful"], statuses
    assert "deploy of fleet to v1.2.0" in mine[0]["text"] and "started" in mine[0]["text"]
    assert all(isinstance(m["text"], str) for m in mine)  # Slack's minimum


def test_job_history_filters(admin: Client, finished: dict[str, dict[str, Any]]) -> None:
    failed = admin.get("/api/jobs", params={"status": "failed"}).json()
    assert finished["broken"]["id"] in [j["id"] for j in failed]
    assert all(j["status"] == "failed" for j in failed)
    page = admin.get("/jobs", params={"environment": "broken"}).text
    assert f"#{finished['broken']['id']}" in page and f"#{finished['fleet']['id']}<" not in page


def test_rollback_without_release_is_accepted(ci: Client, server: Server) -> None:
    job = ci.wait(ci.launch("staging", action="rollback", release=None))
    assert job["status"] == "successful", job
