"""Approvals: an environment whose deploys wait for a second person (config: environments.<name>.approval).

A console of its own, beside the shared one: `prod` (the fixture hosts) needs an approval for deploy and
nothing else, `quick` for every action with a 3-second timeout, so expiry is seen without waiting an hour.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import (PASSWORDS, Client, FakeRegistry, Server, chat_webhook, cli, job_processes, start_server,
                      write_config)
from console_server import chromium_page
from console_server import sign_in as sign_in_as

USERS = (("admin", "admin", None), ("deployer", "deployer", None), ("approver", "deployer", None),
         ("viewer", "viewer", None), ("stager", "deployer", "staging"))


@pytest.fixture(scope="module")
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """This console's own chat webhook: job ids here repeat the shared console's."""
    with chat_webhook() as hook:
        yield hook


@pytest.fixture(scope="module")
def approvals(tmp_path_factory: pytest.TempPathFactory, registry: FakeRegistry,
              webhook: tuple[str, list[dict[str, Any]]]) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("approvals")
    config = write_config(root, registry.url, webhook[0])
    data = json.loads(config.read_text())
    data["environments"]["prod"] = {"inventory": "inventories/fleet", "description": "deploys need a second person",
                                    "approval": {"actions": ["deploy"], "timeout_minutes": 60}}
    data["environments"]["quick"] = {"inventory": "inventories/fleet", "approval": {"timeout_minutes": 0.05}}
    data["environments"]["capped"] = {"inventory": "inventories/fleet", "approval": {"max_pending": 2}}
    config.write_text(json.dumps(data))
    for name, role, scope in USERS:
        made = cli(config, "create-user", name, "--role", role, "--password-stdin",
                   *(["--environments", scope] if scope else []), stdin=PASSWORDS[name] + "\n")
        assert made.returncode == 0, made.stderr
    token = cli(config, "create-token", "ci", "--role", "deployer")
    assert token.returncode == 0, token.stderr
    server = start_server(root, config)
    server.tokens["ci"] = token.stdout.strip().splitlines()[-1]
    yield server
    server.stop()


def chat_says(webhook: tuple[str, list[dict[str, Any]]], job_id: int, status: str) -> str:
    """What the chat webhook got about the job reaching `status` (the console posts from a thread of its own)."""
    deadline = time.monotonic() + 15
    while not (said := [m["text"] for m in webhook[1]
                        if m["fleetdeploy"]["id"] == job_id and m["fleetdeploy"]["status"] == status]):
        assert time.monotonic() < deadline, webhook[1]
        time.sleep(0.2)
    return said[0]


def audit(admin: Client, action: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = admin.get("/api/audit", params={"action": action}).json()
    return found


def test_a_deploy_waits_for_a_second_person_then_runs(approvals: Server,
                                                      webhook: tuple[str, list[dict[str, Any]]]) -> None:
    deployer, approver = Client(approvals, "deployer"), Client(approvals, "approver")
    launched = deployer.post("/api/jobs", json={"environment": "prod", "action": "deploy", "release": "v1.2.0",
                                                "extra_vars": {"fixture_step": 0}})
    assert launched.status_code == 201 and launched.json()["status"] == "pending", launched.text
    assert launched.json()["approval_deadline"], launched.text
    job_id = launched.json()["id"]
    job = deployer.get(f"/api/jobs/{job_id}").json()
    assert job["status"] == "pending" and job["approval_deadline"] and job["decided_by"] is None, job
    # Nothing runs and nothing is held: no process, and another action on prod (not gated) starts at once.
    time.sleep(1)
    assert job_processes(approvals.config, job_id) == []
    other = deployer.launch("prod", "rollback", release=None)
    assert deployer.wait(other)["status"] == "successful"
    assert chat_says(webhook, job_id, "pending").endswith(f"awaits another person's approval (job {job_id})")
    page = deployer.get("/").text
    assert f'Awaiting approval: <a href="/jobs/{job_id}">deploy v1.2.0 (job {job_id})</a> by deployer' in page

    # Not by its launcher, not by a viewer, and a deployer of another environment does not even see it.
    mine = deployer.post(f"/api/jobs/{job_id}/approve")
    assert mine.status_code == 403 and "another person must approve it" in mine.json()["detail"], mine.text
    assert Client(approvals, "viewer").post(f"/api/jobs/{job_id}/approve").status_code == 403
    assert Client(approvals, "stager").post(f"/api/jobs/{job_id}/approve").status_code == 404
    # A token is no second person: its holder may be the launcher.
    by_token = Client(approvals, token=approvals.tokens["ci"]).post(f"/api/jobs/{job_id}/approve")
    assert by_token.status_code == 403 and "not a token's" in by_token.json()["detail"], by_token.text
    assert deployer.get(f"/api/jobs/{job_id}").json()["status"] == "pending"

    approved = approver.post(f"/api/jobs/{job_id}/approve")
    assert approved.status_code == 200, approved.text
    done = deployer.wait(job_id)
    assert (done["status"], done["decided_by"], done["launched_by"]) == ("successful", "approver", "deployer"), done
    assert sorted(done["hosts"]) == [f"web{i}" for i in range(1, 7)]
    again = approver.post(f"/api/jobs/{job_id}/approve")
    assert again.status_code == 409 and "successful" in again.json()["detail"], again.text

    admin = Client(approvals, "admin")
    launched = [a for a in audit(admin, "job_launch") if a["target"] == f"job {job_id}"]
    assert launched and launched[0]["detail"]["pending_approval"] is True and launched[0]["actor"] == "deployer"
    assert [a["actor"] for a in audit(admin, "job_approve") if a["target"] == f"job {job_id}"] == ["approver"]


def test_a_rejected_or_withdrawn_job_never_runs_and_says_why(approvals: Server,
                                                             webhook: tuple[str, list[dict[str, Any]]]) -> None:
    deployer, approver = Client(approvals, "deployer"), Client(approvals, "approver")
    rejected = deployer.launch("prod", release="v1.3.0", fixture_step=0)
    r = approver.post(f"/api/jobs/{rejected}/reject", json={"reason": "not during the sale <!channel>"})
    assert r.status_code == 200, r.text
    job = r.json()
    assert (job["status"], job["decided_by"], job["explanation"]) == (
        "rejected", "approver", "rejected by approver: not during the sale <!channel>"), job
    # In the chat the reason is text: its <!channel> would page everyone.
    said = chat_says(webhook, rejected, "rejected")
    assert "not during the sale &lt;!channel&gt;" in said and "<!channel>" not in said, said
    late = Client(approvals, "admin").post(f"/api/jobs/{rejected}/approve")
    assert late.status_code == 409 and "rejected" in late.json()["detail"]

    # Its launcher may withdraw a job (a rejection of their own), through the page's form.
    withdrawn = deployer.launch("prod", release="v1.3.0", fixture_step=0)
    page = deployer.get(f"/jobs/{withdrawn}").text
    assert 'id="approve-button"' not in page and "another person must approve it: you launched it" in page
    assert re.search(r'id="reject-button">Withdraw<', page), page
    r = deployer.post(f"/jobs/{withdrawn}/reject", data={"csrf": deployer.csrf, "reason": "wrong tag"})
    assert r.status_code == 303, r.text
    assert deployer.get(f"/api/jobs/{withdrawn}").json()["explanation"] == "rejected by deployer: wrong tag"
    for job_id in (rejected, withdrawn):
        assert job_processes(approvals.config, job_id) == []
        assert deployer.get(f"/api/jobs/{job_id}").json()["started_at"] is None
    reasons = {a["target"]: a["detail"]["reason"] for a in audit(Client(approvals, "admin"), "job_reject")}
    assert reasons[f"job {rejected}"] == "not during the sale <!channel>" and reasons[f"job {withdrawn}"] == "wrong tag"
    # Jobs that never ran released nothing.
    history = [entry["id"] for entry in deployer.get("/api/environments/prod/releases").json()]
    assert rejected not in history and withdrawn not in history, history


def test_a_pending_job_expires_when_no_one_approves_it_in_time(approvals: Server) -> None:
    deployer = Client(approvals, "deployer")
    job_id = deployer.launch("quick", "soak", release=None)
    deadline = time.monotonic() + 30
    while (job := deployer.get(f"/api/jobs/{job_id}").json())["status"] == "pending":
        assert time.monotonic() < deadline, job
        time.sleep(0.5)
    assert job["status"] == "expired" and job["explanation"] == "no one approved it within 0.05 minutes", job
    late = Client(approvals, "approver").post(f"/api/jobs/{job_id}/approve")
    assert late.status_code == 409 and "expired" in late.json()["detail"], late.text
    expired = [a for a in audit(Client(approvals, "admin"), "job_expire") if a["target"] == f"job {job_id}"]
    assert [a["actor"] for a in expired] == ["console"]
    assert job_processes(approvals.config, job_id) == []


def test_a_pending_job_outlives_a_restart_and_is_approved_after_it(approvals: Server,
                                                                   tmp_path: Path) -> None:
    deployer = Client(approvals, "deployer")
    job_id = deployer.launch("prod", release="v1.1.0", fixture_step=0)
    approvals.stop()
    restarted = start_server(approvals.root, approvals.config)
    try:
        approver = Client(restarted, "approver")
        assert approver.get(f"/api/jobs/{job_id}").json()["status"] == "pending"
        assert approver.post(f"/api/jobs/{job_id}/approve").status_code == 200
        assert approver.wait(job_id)["status"] == "successful"
    finally:
        # The module's other tests use the fixture's Server: point it at the restarted process.
        approvals.url, approvals.proc = restarted.url, restarted.proc


@pytest.mark.browser
def test_the_second_person_approves_on_the_jobs_page_and_watches_it_run(approvals: Server,
                                                                        tmp_path_factory: pytest.TempPathFactory) -> None:
    from playwright.sync_api import expect

    deployer = Client(approvals, "deployer")
    with chromium_page(tmp_path_factory.mktemp("chromium-approvals")) as page:
        # Launched from the form: its confirmation says it will wait, and Launch leaves it pending.
        sign_in_as(page, approvals.url, "deployer", PASSWORDS["deployer"])
        page.goto(f"{approvals.url}/launch?action=deploy&environment=prod")
        page.select_option("select[name=release]", "v2.0.0")
        page.fill("input[name='var.fixture_step']", "0")
        page.click("#review-button")
        expect(page.locator("#confirm-env-name")).to_have_text("prod")
        expect(page.locator("#confirm-approval")).to_contain_text("prod needs another person's approval for deploy")
        page.click("#launch-button")
        expect(page).to_have_url(re.compile(r"/jobs/\d+$"))
        job_id = int(page.url.rsplit("/", 1)[1])
        expect(page.locator("#job-status")).to_have_text("pending")

        sign_in_as(page, approvals.url, "approver", PASSWORDS["approver"])
        page.goto(f"{approvals.url}/jobs/{job_id}")
        expect(page.locator("#job-status")).to_have_text("pending")
        expect(page.locator("#approval")).to_contain_text("Waiting for approval")
        page.click("#approve-button")
        expect(page.locator("#job-status")).to_have_text("successful", timeout=60_000)
        expect(page.locator("#approved-by")).to_have_text("Approved by approver")
        expect(page.locator("#grid tbody tr")).to_have_count(6)
        expect(page.locator("#approval")).to_have_count(0)

        # A page left open on a pending job follows it when someone else decides, without a reload by hand.
        other = deployer.launch("prod", release="v1.0.0", fixture_step=0)
        page.goto(f"{approvals.url}/jobs/{other}")
        expect(page.locator("#job-status")).to_have_text("pending")
        assert Client(approvals, "admin").post(f"/api/jobs/{other}/reject", json={"reason": "later"}).status_code == 200
        expect(page.locator("#job-status")).to_have_text("rejected", timeout=15_000)
        expect(page.locator("#job-explanation")).to_have_text("rejected by admin: later")


def test_an_environment_holds_at_most_max_pending_jobs_waiting_for_an_approval(approvals: Server) -> None:
    """Each pending job keeps its extra vars (secrets too) until decided: a launch beyond the environment's
    approval.max_pending is refused with 429 and nothing stored, and deciding one makes room again."""
    deployer = Client(approvals, "deployer")
    admin = Client(approvals, "admin")

    def launch() -> Any:
        return deployer.post("/api/jobs", json={"environment": "capped", "action": "deploy", "release": "v1.2.0",
                                                "extra_vars": {"fixture_step": 0}})

    first, second = launch(), launch()
    assert [first.status_code, second.status_code] == [201, 201], (first.text, second.text)
    assert {first.json()["status"], second.json()["status"]} == {"pending"}
    launches_before = len(audit(admin, "job_launch"))
    third = launch()
    assert third.status_code == 429, third.text
    assert "already has 2 jobs waiting for an approval (approval.max_pending)" in third.json()["detail"], third.text
    assert len(audit(admin, "job_launch")) == launches_before, "a refused launch left an audit entry"
    assert [j["id"] for j in deployer.get("/api/jobs", params={"environment": "capped"}).json()
            if j["status"] == "pending"] == sorted([first.json()["id"], second.json()["id"]], reverse=True)
    withdrawn = deployer.post(f"/api/jobs/{first.json()['id']}/reject", json={"reason": "making room"})
    assert withdrawn.status_code == 200, withdrawn.text
    fourth = launch()
    assert fourth.status_code == 201 and fourth.json()["status"] == "pending", fourth.text
    for job in (second, fourth):
        deployer.post(f"/api/jobs/{job.json()['id']}/reject", json={"reason": "test over"})
