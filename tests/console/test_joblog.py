"""A job's log per host, searched and downloaded; its times; the release history of an environment and the
diff of two releases' settings. Read as a viewer, refused to a principal scoped to another environment."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from conftest import SECRETS, Client, Server

from fleetdeploy.console.domain import joblog

FIXTURE_TASKS = ["Check the release name is set", "Log in to the registry with the vaulted password",
                 "Pull the new image", "Note the release the host now serves", "Report the running release"]


@pytest.fixture(scope="module")
def viewer(server: Server) -> Client:
    return Client(server, "viewer")


@pytest.fixture(scope="module")
def stager(server: Server) -> Client:
    """A deployer scoped to staging only: the fleet and broken environments are not theirs."""
    return Client(server, "stager")


def _no_secret(text: str) -> None:
    for name, value in SECRETS.items():
        assert value not in text, name


def test_a_hosts_log_holds_its_tasks_in_order_with_elapsed_times(viewer: Client,
                                                                 finished: dict[str, dict[str, Any]]) -> None:
    job_id = finished["fleet"]["id"]
    r = viewer.get(f"/api/jobs/{job_id}/hosts/web3/log")
    assert r.status_code == 200, r.text
    log = r.json()
    assert log["host"] == "web3" and log["result"] == "changed" and not log["events_pruned"]
    results = [t for t in log["tasks"] if t["event"].startswith("runner_on_")]
    named = [t["task"] for t in results if t["task"] in FIXTURE_TASKS]
    assert named == FIXTURE_TASKS, named
    assert [t["counter"] for t in log["tasks"]] == sorted(t["counter"] for t in log["tasks"])
    assert all(t["elapsed"] is not None and t["elapsed"] >= 0 for t in results), results
    pull = next(t for t in results if t["task"] == "Pull the new image")
    assert pull["state"] == "changed"
    report = next(t for t in results if t["task"] == "Report the running release")
    assert "web3 now runs v1.2.0" in report["stdout"]
    text = "\n".join(t["stdout"] for t in log["tasks"])
    assert "web3" in text and not any(f"web{i}" in text for i in (1, 2, 4, 5, 6)), text
    _no_secret(r.text)


def test_a_failed_hosts_log_shows_why(viewer: Client, finished: dict[str, dict[str, Any]]) -> None:
    job_id = finished["broken"]["id"]
    bad = viewer.get(f"/api/jobs/{job_id}/hosts/bad1/log").json()
    assert bad["result"] == "failed"
    failed = [t for t in bad["tasks"] if t["state"] == "failed"]
    assert [t["task"] for t in failed] == ["Fail where the inventory says so"]
    assert "bad1 refused the new release" in failed[0]["stdout"]
    ghost = viewer.get(f"/api/jobs/{job_id}/hosts/ghost1/log").json()
    assert ghost["result"] == "unreachable" and [t["state"] for t in ghost["tasks"]][-1] == "unreachable"


def test_search_and_download_the_jobs_log(viewer: Client, finished: dict[str, dict[str, Any]]) -> None:
    job_id = finished["fleet"]["id"]
    found = viewer.get(f"/api/jobs/{job_id}/log/search", params={"q": "NOW RUNS"}).json()
    assert sorted(m["host"] for m in found["matches"]) == [f"web{i}" for i in range(1, 7)]
    assert all("now runs v1.2.0" in m["line"] and "\x1b" not in m["line"] for m in found["matches"])
    assert not found["truncated"]
    one = viewer.get(f"/api/jobs/{job_id}/log/search", params={"q": "now runs", "host": "web2"}).json()
    assert [m["host"] for m in one["matches"]] == ["web2"]
    assert viewer.get(f"/api/jobs/{job_id}/log/search", params={"q": ""}).status_code == 422

    r = viewer.get(f"/api/jobs/{job_id}/log.txt")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert r.headers["content-disposition"] == f'attachment; filename="job-{job_id}.log"'
    assert r.text.startswith(f"# job {job_id}: deploy of fleet to v1.2.0, launched by token:ci")
    assert "PLAY RECAP" in r.text and all(f"web{i} now runs v1.2.0" in r.text for i in range(1, 7))
    assert "\x1b[" not in r.text
    _no_secret(r.text)


def test_the_job_shows_its_finish_time_elapsed_and_rc(viewer: Client, finished: dict[str, dict[str, Any]]) -> None:
    job = viewer.get(f"/api/jobs/{finished['broken']['id']}").json()
    assert job["rc"] not in (None, 0) and job["finished_at"] and job["elapsed"] > 0
    page = viewer.get(f"/jobs/{job['id']}").text
    assert f'finished <span id="job-finished">{job["finished_at"]}</span>' in page
    assert f'rc <span id="job-rc">{job["rc"]}</span>' in page
    assert 'id="log-download"' in page and f'href="/api/jobs/{job["id"]}/log.txt"' in page


def test_the_log_routes_refuse_other_environments_and_unknown_hosts(server: Server, stager: Client, viewer: Client,
                                                                    finished: dict[str, dict[str, Any]]) -> None:
    job_id = finished["fleet"]["id"]
    for path in (f"/api/jobs/{job_id}/hosts/web1/log", f"/api/jobs/{job_id}/log.txt",
                 f"/api/jobs/{job_id}/log/search?q=runs"):
        r = stager.get(path)
        assert r.status_code == 404, (path, r.text)
        assert "web1" not in r.text and "now runs" not in r.text
        assert Client(server).get(path).status_code == 401, path
    assert viewer.get(f"/api/jobs/{job_id}/hosts/bad1/log").status_code == 404
    assert viewer.get(f"/api/jobs/{job_id}/hosts/..%2F..%2Fetc/log").status_code == 404


def test_release_history_says_who_released_what_when_with_the_digest(
        viewer: Client, finished: dict[str, dict[str, Any]],
        staging_releases: tuple[dict[str, Any], dict[str, Any]]) -> None:
    old, new = staging_releases
    r = viewer.get("/api/environments/staging/releases")
    assert r.status_code == 200, r.text
    history = r.json()
    ids = [h["id"] for h in history]
    assert ids == sorted(ids, reverse=True) and {old["id"], new["id"]} <= set(ids)
    assert not {h["id"] for h in history} & {finished["fleet"]["id"]}  # another environment's job
    entry = next(h for h in history if h["id"] == new["id"])
    assert entry["release"] == "v1.3.0" and entry["service"] == "web" and entry["action"] == "deploy"
    assert entry["launched_by"] == "token:ci" and entry["status"] == "successful" and entry["rc"] == 0
    assert entry["finished_at"] and sorted(entry["hosts"]) == [f"web{i}" for i in range(1, 7)]
    assert entry["digests"] == {"fleetdeploy/web:v1.3.0": "sha256:" + hashlib.sha256(b"v1.3.0").hexdigest()}
    assert viewer.get("/api/environments/staging/releases", params={"service": "db"}).json() == []

    diff = viewer.get("/api/environments/staging/releases/diff", params={"before": old["id"], "after": new["id"]})
    assert diff.status_code == 200, diff.text
    body = diff.json()
    assert body["changes"] == [
        {"name": "fixture_batch", "before": None, "after": 3, "change": "added"},
        {"name": "release", "before": "v1.2.0", "after": "v1.3.0", "change": "changed"},
    ]
    assert body["same"] == ["fixture_step"]

    page = viewer.get("/environments/staging/releases").text
    assert f'<tr data-job="{new["id"]}">' in page and "sha256:" in page
    shown = viewer.get("/environments/staging/releases/diff", params={"before": new["id"], "after": old["id"]}).text
    assert 'data-setting="release"' in shown and '<code>"v1.2.0"</code></td><td><code>"v1.3.0"</code>' in shown


def test_release_history_refuses_other_environments(stager: Client, finished: dict[str, dict[str, Any]],
                                                    staging_releases: tuple[dict[str, Any], dict[str, Any]]) -> None:
    fleet, broken = finished["fleet"]["id"], finished["broken"]["id"]
    assert stager.get("/api/environments/fleet/releases").status_code == 404
    assert stager.get("/api/environments/nowhere/releases").status_code == 404
    assert stager.get("/environments/fleet/releases").status_code == 404
    r = stager.get("/api/environments/fleet/releases/diff", params={"before": fleet, "after": fleet})
    assert r.status_code == 404
    # Staging is the stager's, but neither job is staging's: the diff names no job of another environment.
    r = stager.get("/api/environments/staging/releases/diff", params={"before": fleet, "after": broken})
    assert r.status_code == 404 and "fleet" not in r.text
    own = stager.get("/api/environments/staging/releases").json()
    assert {j["id"] for j in staging_releases} <= {h["id"] for h in own}
    assert {h["environment"] for h in own} == {"staging"}


def _event(counter: int, kind: str, host: str, task: str, created: str, stdout: str = "",
           **data: Any) -> dict[str, Any]:
    return {"type": "event", "id": counter, "event": {
        "counter": counter, "event": kind, "created": created, "stdout": stdout,
        "event_data": {"host": host, "task": task, **data}}}


def test_elapsed_comes_from_the_runner_or_from_the_start_and_end_events() -> None:
    messages = [
        {"type": "hosts", "id": 1, "hosts": ["a", "b"]},
        _event(2, "runner_on_start", "a", "copy", "2026-01-01T10:00:00.000000"),
        _event(3, "runner_on_start", "b", "copy", "2026-01-01T10:00:00.500000"),
        _event(4, "runner_on_ok", "a", "copy", "2026-01-01T10:00:02.250000", "\x1b[0;33mchanged: [a]\x1b[0m",
               res={"changed": True}),
        _event(5, "runner_on_failed", "b", "copy", "2026-01-01T10:00:03.000000", "fatal: [b]: ignored",
               ignore_errors=True, duration=1.5),
        _event(6, "runner_item_on_ok", "a", "loop", "2026-01-01T10:00:04.000000", "ok: [a] => (item=x)"),
    ]
    a = joblog.host_log(messages, "a")
    assert [(t["task"], t["state"], t["elapsed"]) for t in a] == [("copy", "changed", 2.25), ("loop", "ok", None)]
    b = joblog.host_log(messages, "b")
    assert [(t["state"], t["elapsed"]) for t in b] == [("ok", 1.5)]  # ignore_errors: not a failure
    assert "".join(joblog.as_text(messages)).startswith("changed: [a]\nfatal: [b]")
    assert [m["line"] for m in joblog.search(messages, "CHANGED")] == ["changed: [a]"]


def test_a_search_answers_with_at_most_max_matches_lines() -> None:
    flood = [_event(i, "runner_on_ok", "a", "t", "2026-01-01T10:00:00", "ok: [a]\nok: [a]") for i in range(400)]
    assert len(joblog.search(flood, "ok")) == joblog.MAX_MATCHES
