"""End to end in Debian's headless Chromium, driven by Playwright: what a person sees and clicks.

The console under test runs the fixture playbooks; tests/test_deploy.py drives a real deploy of the lab
through the console in the same browser.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import PASSWORDS, Client, Server, job_processes
from console_server import chromium_page
from console_server import sign_in as sign_in_as

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser_page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    with chromium_page(tmp_path_factory.mktemp("chromium-profile")) as page:
        yield page


def sign_in(page: object, server: Server, user: str) -> None:
    sign_in_as(page, server.url, user, PASSWORDS[user])


def test_deploy_from_the_browser_fills_the_grid_and_shows_the_release(browser_page: object, server: Server,
                                                                       tmp_path: Path) -> None:
    from playwright.sync_api import Page, expect

    page = browser_page
    assert isinstance(page, Page)
    sign_in(page, server, "deployer")
    page.click("#nav-launch")
    expect(page.locator("#launch-form")).to_be_visible()
    page.select_option("select[name=environment]", "fleet")
    # The release list is what the registry holds, newest first.
    options = page.locator("select[name=release] option").all_inner_texts()
    assert options == ["v2.0.0", "v1.3.0", "v1.2.0", "v1.1.0", "v1.0.0"]
    page.select_option("select[name=release]", "v2.0.0")
    page.fill("input[name='var.fixture_step']", "0")
    page.click("#review-button")
    expect(page.locator("#confirm-env-name")).to_have_text("fleet")
    page.click("#launch-button")
    expect(page).to_have_url(re.compile(r"/jobs/\d+$"))
    job_id = int(page.url.rsplit("/", 1)[1])

    # The grid fills in: a host runs a task, rows for all six hosts, three batch columns ...
    expect(page.locator("#grid td.cell.running").first).to_be_visible()
    expect(page.locator("#grid tbody tr")).to_have_count(6)
    expect(page.locator("#grid thead th", has_text="batch 3")).to_have_count(1)
    # ... and turns green: the job succeeds, every host's result is changed, the recap is shown.
    expect(page.locator("#job-status")).to_have_text("successful")
    expect(page.locator("#grid td.result[data-result=changed]")).to_have_count(6)
    expect(page.locator("#grid td.cell.failed")).to_have_count(0)
    expect(page.locator("#recap tbody tr")).to_have_count(6)
    expect(page.locator("#log")).to_contain_text("web6 now runs v2.0.0")
    expect(page.locator("#log")).not_to_contain_text("Vault password")
    page.screenshot(path=str(tmp_path / "job.png"), full_page=True)

    page.click("header a.brand")
    fleet = page.locator("#env-fleet")
    expect(fleet.locator("td.release", has_text="v2.0.0")).to_have_count(6)
    expect(fleet.locator("table.jobs")).to_contain_text(f"#{job_id}")


def test_a_viewer_gets_no_launch_button_and_a_403(browser_page: object, server: Server) -> None:
    from playwright.sync_api import Page, expect

    page = browser_page
    assert isinstance(page, Page)
    sign_in(page, server, "viewer")
    expect(page.locator("#nav-launch")).to_have_count(0)
    expect(page.locator("#env-fleet")).to_be_visible()
    csrf = page.locator("form.whoami input[name=csrf]").get_attribute("value")
    r = page.request.post(f"{server.url}/api/jobs", headers={"X-CSRF-Token": csrf or ""},
                          data={"environment": "fleet", "action": "deploy", "release": "v2.0.0"})
    assert r.status == 403 and "may not launch" in r.json()["detail"]
    page.goto(f"{server.url}/launch")
    expect(page.locator("#error")).to_contain_text("may not launch")


def test_cancel_a_long_job_from_the_browser(browser_page: object, server: Server) -> None:
    from playwright.sync_api import Page, expect

    page = browser_page
    assert isinstance(page, Page)
    sign_in(page, server, "deployer")
    page.goto(f"{server.url}/launch?action=soak&environment=fleet")
    page.click("#review-button")
    page.click("#launch-button")
    expect(page).to_have_url(re.compile(r"/jobs/\d+$"))
    job_id = int(page.url.rsplit("/", 1)[1])
    expect(page.locator("#grid td.cell.running").first).to_be_visible()
    page.click("#cancel-button")
    expect(page.locator("#job-status")).to_have_text("canceled")
    expect(page.locator("#job-explanation")).to_contain_text("canceled by deployer")
    expect(page.locator("#cancel-button")).to_have_count(0)
    assert job_processes(server.config, job_id) == []


def test_relaunch_a_finished_job_from_its_page(browser_page: object, server: Server,
                                              finished: dict[str, dict[str, Any]]) -> None:
    from playwright.sync_api import Page, expect

    page = browser_page
    assert isinstance(page, Page)
    old = finished["fleet"]["id"]
    sign_in(page, server, "deployer")
    page.goto(f"{server.url}/jobs/{old}")
    expect(page.locator("#job-status")).to_have_text("successful")
    expect(page.locator("#retry-button")).to_have_count(0)  # no host failed
    page.click("#relaunch-button")
    expect(page).to_have_url(re.compile(r"/jobs/\d+$"))
    new = int(page.url.rsplit("/", 1)[1])
    assert new != old
    expect(page.locator("#relaunch-of")).to_have_text(f"Relaunch of job {old}")
    expect(page.locator("#job-status")).to_have_text("successful")
    expect(page.locator("#grid td.result[data-result=changed]")).to_have_count(6)
    page.click("#relaunch-of a")
    expect(page).to_have_url(f"{server.url}/jobs/{old}")


def test_a_job_watched_live_offers_relaunch_and_retry_when_it_ends_without_a_reload(
        browser_page: object, server: Server, ci: Client) -> None:
    """The page of a running job has no Relaunch (the job has not ended); when its stream ends, the page
    gets the server's actions: Relaunch, and Retry naming the failed and unreachable hosts, with no reload."""
    from playwright.sync_api import Page, expect

    page = browser_page
    assert isinstance(page, Page)
    sign_in(page, server, "deployer")
    job_id = ci.launch("broken", release="v1.2.0", fixture_step=2)
    page.goto(f"{server.url}/jobs/{job_id}")
    expect(page.locator("#job-status")).to_have_text(re.compile("queued|running"))
    expect(page.locator("#relaunch-button")).to_have_count(0)
    page.evaluate("window.fdSamePage = true")
    expect(page.locator("#job-status")).to_have_text("failed")
    expect(page.locator("#relaunch-button")).to_be_visible()
    expect(page.locator("#retry-button")).to_have_text("Retry on bad1, ghost1")
    assert page.evaluate("window.fdSamePage === true"), "the page was reloaded"
    page.click("#retry-button")
    expect(page.locator("#relaunch-of")).to_have_text(f"Relaunch of job {job_id}, on bad1, ghost1 only")


def test_api_docs_render_offline_under_the_csp(browser_page: object, server: Server) -> None:
    """Swagger UI from the console's own copy: nothing from another origin, no CSP violation."""
    from playwright.sync_api import Page, expect

    page = browser_page
    assert isinstance(page, Page)
    foreign: list[str] = []
    violations: list[str] = []
    page.on("request", lambda r: None if r.url.startswith(server.url) else foreign.append(r.url))
    page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
    page.goto(f"{server.url}/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("fleetdeploy console")
    expect(page.locator(".opblock-summary-path", has_text="/api/jobs/{job_id}/events")).to_be_visible()
    assert foreign == [] and violations == [], (foreign, violations)


def test_a_click_on_a_grid_cell_shows_that_hosts_log(browser_page: object, server: Server,
                                                     finished: dict[str, dict[str, Any]]) -> None:
    """A viewer clicks bad1's cell in a finished job: its tasks, in order, the failure's message, elapsed times;
    then a search of the job's output and its download link."""
    from playwright.sync_api import Page, expect

    page = browser_page
    assert isinstance(page, Page)
    job_id = finished["broken"]["id"]
    sign_in(page, server, "viewer")
    page.goto(f"{server.url}/jobs/{job_id}")
    expect(page.locator("#job-status")).to_have_text("failed")
    expect(page.locator("#host-log-card")).to_be_hidden()
    page.locator("#grid td.cell[data-host=bad1]").first.click()
    card = page.locator("#host-log-card")
    expect(card).to_be_visible()
    expect(page.locator("#host-log-name")).to_have_text("bad1")
    expect(page.locator("#host-log-result")).to_have_text("failed")
    failed = card.locator("tr.hosttask[data-state=failed]")
    expect(failed).to_have_count(1)
    expect(failed).to_contain_text("Fail where the inventory says so")
    expect(failed).to_contain_text("bad1 refused the new release")
    expect(failed.locator("td.elapsed")).to_have_text(re.compile(r"^\d+\.\d\ds$"))
    expect(card).not_to_contain_text("good1")
    # The host's name in its row header opens that host's log instead.
    page.click("#grid th.host:text-is('good1')")
    expect(page.locator("#host-log-name")).to_have_text("good1")
    expect(card.locator("tr.hosttask", has_text="Pull the new image")).to_have_count(1)

    page.fill("#log-search-q", "refused the new")
    page.click("#log-search button")
    # Every line found is bad1's (its failure prints the message on one line or more).
    expect(page.locator("#log-matches tbody tr").first).to_contain_text("bad1 refused the new release")
    expect(page.locator("#log-matches tbody tr td:first-child", has_not_text="bad1")).to_have_count(0)
    expect(page.locator("#job-rc")).to_have_text(str(finished["broken"]["rc"]))
    with page.expect_download() as download:
        page.click("#log-download")
    assert download.value.suggested_filename == f"job-{job_id}.log"


def test_the_release_history_page_compares_two_releases(
        browser_page: object, server: Server, staging_releases: tuple[dict[str, Any], dict[str, Any]]) -> None:
    from playwright.sync_api import Page, expect

    page = browser_page
    assert isinstance(page, Page)
    old, new = (job["id"] for job in staging_releases)
    sign_in(page, server, "viewer")
    page.click("#env-staging a:text-is('release history')")
    expect(page).to_have_url(f"{server.url}/environments/staging/releases")
    row = page.locator(f"#releases tr[data-job='{new}']")
    expect(row).to_contain_text("v1.3.0")
    expect(row).to_contain_text("token:ci")
    expect(row.locator("td.digest")).to_contain_text("sha256:")
    page.check(f"#releases tr[data-job='{old}'] input[name=before]")
    page.check(f"#releases tr[data-job='{new}'] input[name=after]")
    page.click("#diff-button")
    expect(page.locator("#diff tr[data-setting=release]")).to_contain_text('"v1.2.0"')
    expect(page.locator("#diff tr[data-setting=release]")).to_contain_text('"v1.3.0"')
    expect(page.locator("#diff tr[data-setting=fixture_batch]")).to_contain_text("3")


def test_an_admin_changes_a_users_role_scope_and_password_on_the_users_page(browser_page: object, server: Server,
                                                                            admin: Client) -> None:
    """Issue 21: from a user's row, an admin changes its role, scope and password; the user's sessions end and
    the new password signs in with the new rights. A second change with the password left empty keeps it."""
    from playwright.sync_api import Page, expect

    page = browser_page
    assert isinstance(page, Page)
    first, second = "changeling-password-1", "changeling-password-2"
    assert admin.http.post("/admin/users", data={"csrf": admin.csrf, "name": "changeling", "role": "viewer",
                                                  "environments": "staging", "password": first}).status_code == 303
    PASSWORDS["changeling"] = first
    before = Client(server, "changeling")
    assert before.get("/api/me").json() == {"name": "changeling", "role": "viewer", "environments": ["staging"],
                                             "token": False}

    def change(role: str, environments: str, password: str) -> None:
        page.goto(f"{server.url}/admin/users")
        page.click("#change-changeling summary")
        form = page.locator("#change-changeling form")
        expect(form.locator("input[name=name]")).to_have_value("changeling")
        form.locator("select[name=role]").select_option(role)
        form.locator("input[name=environments]").fill(environments)
        form.locator("input[name=password]").fill(password)
        form.locator("button[type=submit]").click()
        expect(page).to_have_url(f"{server.url}/admin/users")
        expect(page.locator("#users tr", has_text="changeling")).to_contain_text(role)

    sign_in(page, server, "admin")
    expect(page.locator("#change-changeling form")).to_be_hidden()  # folded until asked for
    change("deployer", "staging, fleet", second)
    assert before.get("/api/me").status_code == 401  # its sessions ended
    PASSWORDS["changeling"] = second
    after = Client(server, "changeling")
    assert after.get("/api/me").json()["role"] == "deployer"
    assert [e["name"] for e in after.get("/api/environments").json()] == ["fleet", "staging"]

    change("viewer", "staging", "")
    assert after.get("/api/me").status_code == 401
    assert Client(server, "changeling").get("/api/me").json()["role"] == "viewer"  # the second password still
    audit = admin.get("/api/audit", params={"action": "user_update"}).json()
    changes = [e for e in audit if e["target"] == "changeling"]
    assert [e["detail"]["password_changed"] for e in changes[:2]] == [False, True], changes  # newest first
