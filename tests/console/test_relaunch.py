"""Relaunch a job, or retry it on its failed hosts only: copied from the old job, checked as a fresh launch."""

from __future__ import annotations

from typing import Any

from conftest import Client, Server
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fleetdeploy.console.db import Job, make_engine
from fleetdeploy.console.redact import MASK


def _stored_job(server: Server, **columns: Any) -> int:
    """A finished job written straight into the console's database, as an older console or config left it."""
    with Session(make_engine(f"sqlite:///{server.root / 'data' / 'console.db'}")) as db:
        job = Job(playbook="playbooks/deploy.yml", launched_by="token:ci", events_pruned=False, **columns)
        db.add(job)
        db.commit()
        return job.id


def _newest_job(server: Server) -> int:
    with Session(make_engine(f"sqlite:///{server.root / 'data' / 'console.db'}")) as db:
        return int(db.scalar(select(func.max(Job.id))) or 0)


def test_relaunch_copies_the_job_and_runs_it_as_the_caller(server: Server, admin: Client,
                                                          finished: dict[str, dict[str, Any]]) -> None:
    old = finished["fleet"]
    deployer = Client(server, "deployer")
    r = deployer.post(f"/api/jobs/{old['id']}/relaunch")
    assert r.status_code == 201, r.text
    assert r.json()["relaunch_of"] == old["id"]
    new = deployer.wait(r.json()["id"])
    assert new["status"] == "successful", new
    for key in ("environment", "action", "release", "extra_vars"):
        assert new[key] == old[key], key
    assert old["launched_by"] == "token:ci" and new["launched_by"] == "deployer"
    assert new["relaunch_of"] == old["id"] and new["limit"] is None
    assert sorted(new["hosts"]) == [f"web{i}" for i in range(1, 7)]
    audit = admin.get("/api/audit", params={"action": "job_relaunch", "actor": "deployer"}).json()
    assert any(a["target"] == f"job {new['id']}" and a["detail"]["relaunch_of"] == old["id"] for a in audit), audit
    page = deployer.get(f"/jobs/{new['id']}").text
    assert f'Relaunch of <a href="/jobs/{old["id"]}">job {old["id"]}</a>' in page


def test_retry_runs_only_the_failed_and_unreachable_hosts(server: Server, ci: Client,
                                                          finished: dict[str, dict[str, Any]]) -> None:
    old = finished["broken"]
    assert old["hosts"] == {"good1": "changed", "bad1": "failed", "ghost1": "unreachable"}
    r = ci.post(f"/api/jobs/{old['id']}/relaunch", json={"hosts": "failed"})
    assert r.status_code == 201, r.text
    retry = ci.wait(r.json()["id"])
    assert retry["relaunch_of"] == old["id"] and retry["limit"] == ["bad1", "ghost1"]
    assert retry["hosts"] == {"bad1": "failed", "ghost1": "unreachable"}
    assert retry["grid"]["hosts"] == ["bad1", "ghost1"]
    ran_on = {m["event"]["event_data"]["host"] for m in ci.events(retry["id"])
              if m["type"] == "event" and m["event"]["event_data"].get("host")}
    assert ran_on == {"bad1", "ghost1"}, ran_on
    # A relaunch of the retry runs on the hosts the retry ran on.
    again = ci.post(f"/api/jobs/{retry['id']}/relaunch")
    assert again.status_code == 201, again.text
    rerun = ci.wait(again.json()["id"])
    assert rerun["limit"] == ["bad1", "ghost1"] and sorted(rerun["hosts"]) == ["bad1", "ghost1"]


def test_retry_of_a_job_without_failed_hosts_is_refused(ci: Client, finished: dict[str, dict[str, Any]]) -> None:
    r = ci.post(f"/api/jobs/{finished['fleet']['id']}/relaunch", json={"hosts": "failed"})
    assert r.status_code == 409 and "no failed or unreachable host" in r.json()["detail"], r.text
    assert ci.post(f"/api/jobs/{finished['fleet']['id']}/relaunch", json={"hosts": "some"}).status_code == 422


def test_only_a_principal_who_may_launch_it_now_may_relaunch(server: Server, admin: Client,
                                                              finished: dict[str, dict[str, Any]]) -> None:
    job_id = finished["fleet"]["id"]
    before = _newest_job(server)
    for viewer in (Client(server, "viewer"), Client(server, token=server.tokens["ci-viewer"])):
        r = viewer.post(f"/api/jobs/{job_id}/relaunch")
        assert r.status_code == 403 and "may not launch" in r.json()["detail"], r.text
    # A deployer of staging only does not see fleet's jobs at all. (A token: the user "stager" may be
    # locked out by the sign-in rate limit tests.)
    made = admin.post("/api/tokens", json={"name": "relaunch-stager", "role": "deployer", "environments": ["staging"]})
    assert made.status_code == 201, made.text
    stager = Client(server, token=made.json()["token"])
    assert stager.post(f"/api/jobs/{job_id}/relaunch").status_code == 404
    assert stager.post(f"/api/jobs/{job_id}/relaunch", json={"hosts": "failed"}).status_code == 404
    assert Client(server).post(f"/api/jobs/{job_id}/relaunch").status_code == 401
    assert _newest_job(server) == before


def test_a_running_job_is_not_relaunched(ci: Client) -> None:
    job_id = ci.launch("staging", action="soak", release=None)
    try:
        r = ci.post(f"/api/jobs/{job_id}/relaunch")
        assert r.status_code == 409 and "once it has ended" in r.json()["detail"], r.text
    finally:
        ci.post(f"/api/jobs/{job_id}/cancel")
    assert ci.wait(job_id)["status"] == "canceled"


def test_a_job_whose_extra_vars_held_a_secret_is_not_relaunched_with_the_mask(ci: Client) -> None:
    job = ci.wait(ci.launch("staging", action="secrets", release=None, api_token="relaunch-Token-1138"))
    assert job["status"] == "successful" and job["extra_vars"]["api_token"] == MASK, job
    r = ci.post(f"/api/jobs/{job['id']}/relaunch")
    assert r.status_code == 422 and "api_token" in r.json()["detail"], r.text


def test_relaunch_checks_the_vars_against_the_actions_schema_of_today(server: Server, ci: Client) -> None:
    # deploy's schema (additionalProperties: false) has no fixture_removed: as if it allowed it once.
    job_id = _stored_job(server, environment="fleet", action="deploy", release="v1.2.0", status="successful",
                         extra_vars={"release": "v1.2.0", "fixture_removed": 1})
    before = _newest_job(server)
    r = ci.post(f"/api/jobs/{job_id}/relaunch")
    assert r.status_code == 422 and "fixture_removed" in r.json()["detail"], r.text
    assert _newest_job(server) == before


def test_retry_puts_only_inventory_host_names_in_the_limit(server: Server, ci: Client) -> None:
    # Host names come from the playbook's events: none may reach --limit as a pattern or an @file.
    summary = {"columns": [], "cells": [], "recap": {}, "releases": {},
               "hosts": ["@/etc/passwd", "bad1,good1"], "results": {"@/etc/passwd": "failed", "bad1,good1": "failed"}}
    job_id = _stored_job(server, environment="broken", action="deploy", release="v1.2.0", status="failed",
                         extra_vars={"release": "v1.2.0"}, summary=summary)
    before = _newest_job(server)
    r = ci.post(f"/api/jobs/{job_id}/relaunch", json={"hosts": "failed"})
    assert r.status_code == 422 and "@/etc/passwd, bad1,good1" in r.json()["detail"], r.text
    assert _newest_job(server) == before


def test_the_job_page_offers_relaunch_and_retry_to_who_may_use_them(server: Server, admin: Client,
                                                                    finished: dict[str, dict[str, Any]]) -> None:
    broken = admin.get(f"/jobs/{finished['broken']['id']}").text
    assert 'id="relaunch-button"' in broken and 'id="retry-button">Retry on bad1, ghost1<' in broken
    fleet = admin.get(f"/jobs/{finished['fleet']['id']}").text
    assert 'id="relaunch-button"' in fleet and 'id="retry-button"' not in fleet
    seen_by_viewer = Client(server, "viewer").get(f"/jobs/{finished['broken']['id']}").text
    assert 'id="relaunch-button"' not in seen_by_viewer and 'id="retry-button"' not in seen_by_viewer
