"""The launch form (issue 21, "What users of AWX and Semaphore expect"): fields made from the action's schema,
--limit, --check and --diff where the action allows them, a confirmation page, and the environment and the
values kept when the action changes.

The browser tests use the shared console's `inspect` action (conftest.INSPECT_SCHEMA: the built-in deploy's
extra vars and a field of every other kind, `allow: [limit, check, diff]`), on staging.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import PASSWORDS, Client, Server
from console_server import chromium_page
from console_server import sign_in as sign_in_as
from fleetdeploy.console.config import Action, load
from fleetdeploy.console.domain.errors import ConsoleError
from fleetdeploy.console.runner.notify import message
from fleetdeploy.console.web.launchform import LaunchForm, fields_of, takes_free_vars

NOT_PASSED = "(not passed: the inventory's value)"


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    with chromium_page(tmp_path_factory.mktemp("chromium-launch")) as page:
        yield page


def _page(page: object, server: Server, url: str) -> Any:
    from playwright.sync_api import Page

    assert isinstance(page, Page)
    sign_in_as(page, server.url, "deployer", PASSWORDS["deployer"])
    page.goto(f"{server.url}{url}")
    return page


def choose_action(page: Any, action: str) -> None:
    """Pick another action and wait for the form the server sends back for it."""
    with page.expect_navigation():
        page.select_option("#launch-form select[name=action]", action)


def job_ids(client: Client) -> list[int]:
    return [j["id"] for j in client.get("/api/jobs", params={"limit": 500}).json()]


# ----- in the browser ---------------------------------------------------------------------------------

@pytest.mark.browser
def test_changing_the_action_keeps_the_environment_and_the_values_both_actions_have(page: object,
                                                                                     server: Server) -> None:
    """Before the fix, the action picker was a form of its own: a change reloaded the page on the environment
    the page was first shown with, and everything typed was gone."""
    from playwright.sync_api import expect

    p = _page(page, server, "/launch")
    p.select_option("select[name=environment]", "staging")
    choose_action(p, "rollback")
    expect(p.locator("select[name=action]")).to_have_value("rollback")
    expect(p.locator("select[name=environment]")).to_have_value("staging")

    choose_action(p, "deploy")
    p.select_option("select[name=release]", "v1.1.0")
    p.fill("[name='var.fixture_batch']", "3")
    choose_action(p, "inspect")
    expect(p.locator("select[name=environment]")).to_have_value("staging")
    expect(p.locator("select[name=release]")).to_have_value("v1.1.0")
    expect(p.locator("[name='var.fixture_batch']")).to_have_value("3")
    expect(p.locator("#launch-options")).to_be_visible()


@pytest.mark.browser
def test_the_form_has_a_typed_field_for_each_kind_of_the_actions_schema(page: object, server: Server) -> None:
    from playwright.sync_api import expect

    p = _page(page, server, "/launch?action=inspect&environment=staging")
    form = p.locator("#launch-form")
    # The release is still the registry's tags, newest first (not required here: the previous one is a choice).
    expect(form.locator("select[name=release] option")).to_have_text(
        ["(previous release)", "v2.0.0", "v1.3.0", "v1.2.0", "v1.1.0", "v1.0.0"])
    # integer and number: their bounds
    batch, step = form.locator("input[name='var.fixture_batch']"), form.locator("input[name='var.fixture_step']")
    for field, attributes in ((batch, {"type": "number", "min": "1", "max": "6", "step": "1"}),
                              (step, {"type": "number", "min": "0", "max": "5", "step": "any"})):
        for name, value in attributes.items():
            expect(field).to_have_attribute(name, value)
    # enum: a select; boolean with a default: a checkbox (checked: the default is true); without one: three ways
    expect(form.locator("select[name='var.inspect_colour'] option")).to_have_text([NOT_PASSED, "red", "green", "blue"])
    expect(form.locator("input[type=checkbox][name='var.inspect_notify']")).to_be_checked()
    expect(form.locator("select[name='var.inspect_strict'] option")).to_have_text([NOT_PASSED, "true", "false"])
    # strings: a password for a writeOnly one, maxLength kept
    expect(form.locator("input[name='var.inspect_token']")).to_have_attribute("type", "password")
    expect(form.locator("input[name='var.deploy_note']")).to_have_attribute("maxlength", "500")
    # The built-in deploy's per-service tags: key/value rows, and one more on demand
    keys = form.locator("#field-deploy_release_overrides input[name='var.deploy_release_overrides.key']")
    expect(keys).to_have_count(2)
    form.locator("#field-deploy_release_overrides").get_by_role("button", name="Add a row").click()
    expect(keys).to_have_count(3)
    # ... and its batch size (an integer, a percentage or a list of them): YAML, for that field alone
    expect(form.locator("textarea[name='var.deploy_serial']")).to_be_visible()
    # A closed schema: no free extra variables. The options its `allow` lists.
    expect(form.locator("textarea[name=extra_vars]")).to_have_count(0)
    for option in ("limit", "check", "diff"):
        expect(form.locator(f"#launch-options [name={option}]")).to_have_count(1)

    # An open schema (soak has none): free YAML and no field; and neither soak nor deploy allows an option.
    choose_action(p, "soak")
    expect(form.locator("textarea[name=extra_vars]")).to_be_visible()
    expect(form.locator("[name^='var.']")).to_have_count(0)
    expect(p.locator("#launch-options")).to_have_count(0)
    choose_action(p, "deploy")
    expect(form.locator("input[name='var.fixture_batch']")).to_be_visible()
    expect(form.locator("textarea[name=extra_vars]")).to_have_count(0)
    expect(p.locator("#launch-options")).to_have_count(0)


@pytest.mark.browser
def test_an_invalid_value_comes_back_with_its_error_and_every_value_kept(page: object, server: Server,
                                                                         ci: Client) -> None:
    from playwright.sync_api import expect

    before = job_ids(ci)
    p = _page(page, server, "/launch?action=deploy&environment=fleet")
    p.select_option("select[name=environment]", "staging")
    p.select_option("select[name=release]", "v1.1.0")
    p.fill("[name='var.fixture_batch']", "9")
    p.fill("[name='var.fixture_step']", "0")
    p.click("#review-button")
    expect(p.locator("#error")).to_have_text("extra vars at fixture_batch: 9 is greater than the maximum of 6")
    expect(p.locator("#confirm-form")).to_have_count(0)
    expect(p.locator("select[name=environment]")).to_have_value("staging")
    expect(p.locator("select[name=release]")).to_have_value("v1.1.0")
    expect(p.locator("[name='var.fixture_batch']")).to_have_value("9")
    expect(p.locator("[name='var.fixture_step']")).to_have_value("0")

    # A per-service tag that is no tag: the schema's pattern speaks.
    choose_action(p, "inspect")
    p.fill("[name='var.fixture_batch']", "")
    p.locator("[name='var.deploy_release_overrides.key']").first.fill("web")
    p.locator("[name='var.deploy_release_overrides.value']").first.fill("not a tag!")
    p.click("#review-button")
    expect(p.locator("#error")).to_contain_text(
        "extra vars at deploy_release_overrides/web: 'not a tag!' does not match")
    expect(p.locator("[name='var.deploy_release_overrides.key']").first).to_have_value("web")
    expect(p.locator("[name='var.deploy_release_overrides.value']").first).to_have_value("not a tag!")
    expect(p.locator("select[name=environment]")).to_have_value("staging")
    assert job_ids(ci) == before


@pytest.mark.browser
def test_the_confirmation_repeats_the_environment_and_every_value_back_keeps_them_and_launch_runs(
        page: object, server: Server, ci: Client) -> None:
    from playwright.sync_api import expect

    p = _page(page, server, "/launch?action=inspect&environment=fleet")
    typed = {"var.deploy_serial": "[1, 50%]", "var.deploy_note": "from the form", "var.fixture_batch": "2",
             "var.inspect_token": "form-Token-Canary-1", "limit": "web1,web2"}
    p.select_option("select[name=environment]", "staging")
    p.select_option("select[name=release]", "v1.2.0")
    p.locator("[name='var.deploy_release_overrides.key']").first.fill("worker")
    p.locator("[name='var.deploy_release_overrides.value']").first.fill("v1.1.0")
    for name, value in typed.items():
        p.fill(f"[name='{name}']", value)
    p.select_option("[name='var.inspect_colour']", "green")
    p.uncheck("input[type=checkbox][name='var.inspect_notify']")
    p.select_option("[name='var.inspect_strict']", "true")
    p.check("#launch-options input[name=check]")
    before = job_ids(ci)
    p.click("#review-button")

    expect(p.locator("#confirm-env-name")).to_have_text("staging")
    expect(p.locator("#confirm-env-description")).to_have_text("same hosts, another lock")
    summary = {"action": "inspect — Print what the launch passed", "playbook": "playbooks/inspect.yml",
               "release": "v1.2.0", "limit": "--limit web1,web2", "check": "--check: nothing changes", "diff": "no"}
    for setting, shown in summary.items():
        expect(p.locator(f"#confirm-summary tr[data-setting={setting}] td")).to_have_text(shown)
    passed = {"deploy_release_overrides": '{"worker": "v1.1.0"}', "deploy_serial": '[1, "50%"]',
              "deploy_note": '"from the form"', "fixture_batch": "2", "inspect_colour": '"green"',
              "inspect_notify": "false", "inspect_strict": "true", "inspect_token": "********", "release": '"v1.2.0"'}
    expect(p.locator("#confirm-vars tr")).to_have_count(len(passed))
    for name, shown in passed.items():
        expect(p.locator(f"#confirm-vars tr[data-var={name}] td")).to_have_text(shown)
    assert "form-Token-Canary-1" not in p.locator("main").inner_text()
    assert job_ids(ci) == before  # only the confirmation's Launch launches

    p.click("#back-button")
    expect(p.locator("#launch-form")).to_be_visible()
    expect(p.locator("select[name=environment]")).to_have_value("staging")
    expect(p.locator("select[name=action]")).to_have_value("inspect")
    expect(p.locator("select[name=release]")).to_have_value("v1.2.0")
    expect(p.locator("[name='var.deploy_release_overrides.key']").first).to_have_value("worker")
    expect(p.locator("[name='var.deploy_release_overrides.value']").first).to_have_value("v1.1.0")
    for name, value in typed.items():
        expect(p.locator(f"[name='{name}']")).to_have_value(value)
    expect(p.locator("[name='var.inspect_colour']")).to_have_value("green")
    expect(p.locator("input[type=checkbox][name='var.inspect_notify']")).not_to_be_checked()
    expect(p.locator("[name='var.inspect_strict']")).to_have_value("true")
    expect(p.locator("#launch-options input[name=check]")).to_be_checked()
    expect(p.locator("#launch-options input[name=diff]")).not_to_be_checked()

    p.click("#review-button")
    p.click("#launch-button")
    expect(p).to_have_url(re.compile(r"/jobs/\d+$"))
    job_id = int(p.url.rsplit("/", 1)[1])
    expect(p.locator("#job-check")).to_be_visible()
    expect(p.locator("#job-options")).to_have_text("ansible-playbook options: --limit web1,web2 --check")
    expect(p.locator("#job-status")).to_have_text("successful")
    expect(p.locator("#grid tbody tr")).to_have_count(2)
    expect(p.locator("#log")).to_contain_text("web1: check mode True, diff mode False")
    job = ci.get(f"/api/jobs/{job_id}").json()
    assert (job["environment"], job["release"], job["check"], job["diff"], job["limit_pattern"]) == (
        "staging", "v1.2.0", True, False, "web1,web2"), job
    assert job["extra_vars"] == {"deploy_release_overrides": {"worker": "v1.1.0"}, "deploy_serial": [1, "50%"],
                                 "deploy_note": "from the form", "fixture_batch": 2, "inspect_colour": "green",
                                 "inspect_notify": False, "inspect_strict": True, "inspect_token": "********",
                                 "release": "v1.2.0"}, job
    newest = ci.get("/api/jobs", params={"environment": "staging", "action": "inspect"}).json()[0]
    assert (newest["id"], newest["check"], newest["limit_pattern"]) == (job_id, True, "web1,web2")


# ----- through the API ----------------------------------------------------------------------------------

def test_the_api_takes_limit_check_and_diff_only_where_the_action_allows_them(server: Server, ci: Client) -> None:
    before = job_ids(ci)
    for option in ({"check": True}, {"diff": True}, {"limit": "web1"}):
        r = ci.post("/api/jobs", json={"environment": "staging", "action": "deploy", "release": "v1.2.0", **option})
        assert r.status_code == 422 and "deploy does not allow" in r.json()["detail"], (option, r.text)
    # Nothing of a pattern that reads a file, is a regex, an option or breaks out of its argument.
    for pattern in ("-e@x", "--check", "web1 web2", "'web1'", '"web1"', "@hosts.txt", "~web[12]", "web1;id",
                    "{{ x }}", "web1/../x"):
        r = ci.post("/api/jobs", json={"environment": "staging", "action": "inspect", "limit": pattern})
        assert r.status_code == 422 and "is not a host pattern" in r.json()["detail"], (pattern, r.text)
    assert job_ids(ci) == before

    launched = ci.post("/api/jobs", json={"environment": "staging", "action": "inspect", "release": "v1.1.0",
                                          "limit": "web1"})
    assert launched.status_code == 201, launched.text
    real = ci.wait(launched.json()["id"])
    assert (real["status"], sorted(real["hosts"]), real["check"], real["limit_pattern"]) == (
        "successful", ["web1"], False, "web1"), real
    checked = ci.post("/api/jobs", json={"environment": "staging", "action": "inspect", "release": "v1.0.0",
                                         "limit": "app:!web2:!web3:!web4:!web5:!web6", "check": True, "diff": True})
    assert checked.status_code == 201, checked.text
    job = ci.wait(checked.json()["id"])
    assert (job["status"], sorted(job["hosts"]), job["check"], job["diff"], job["limit_pattern"]) == (
        "successful", ["web1"], True, True, "app:!web2:!web3:!web4:!web5:!web6"), job
    assert "web1: check mode True, diff mode True" in ci.get(f"/api/jobs/{job['id']}/log.txt").text
    again = ci.post(f"/api/jobs/{job['id']}/relaunch")
    assert again.status_code == 201, again.text
    relaunched = ci.wait(again.json()["id"])
    assert (relaunched["check"], relaunched["diff"], relaunched["limit_pattern"], sorted(relaunched["hosts"])) == (
        True, True, "app:!web2:!web3:!web4:!web5:!web6", ["web1"]), relaunched

    # A run in check mode changed nothing: no release in the history, and the hosts' release stays the real one.
    history = [h["id"] for h in ci.get("/api/environments/staging/releases", params={"service": "inspect"}).json()]
    assert real["id"] in history and job["id"] not in history and relaunched["id"] not in history, history
    dashboard = Client(server, "deployer").get("/").text
    staging = dashboard[dashboard.index('id="env-staging"'):]
    assert '<td>inspect</td><td>web1</td><td class="release">v1.1.0</td>' in staging


# ----- the form's fields alone ----------------------------------------------------------------------------

def _built_in(name: str) -> Any:
    return load(None).actions[name]


def test_the_chat_says_a_job_in_check_mode_changes_nothing() -> None:
    job = {"id": 7, "action": "provision", "environment": "prod", "status": "running", "launched_by": "ana"}
    assert message({**job, "check": True})["text"] == ":rocket: provision of prod in check mode (nothing changes) " \
                                                      "started by ana (job 7)"
    assert "check mode" not in message({**job, "check": False})["text"]


def test_the_built_in_actions_schemas_make_these_fields() -> None:
    assert {f.name: f.kind for f in fields_of(_built_in("deploy"))} == {
        "deploy_release_overrides": "mapping", "deploy_serial": "yaml", "deploy_note": "text"}
    assert fields_of(_built_in("provision")) == [] and not takes_free_vars(_built_in("provision"))
    assert next(f for f in fields_of(_built_in("deploy")) if f.name == "deploy_note").max_length == 500


def test_what_is_typed_becomes_the_extra_vars_the_schema_then_checks() -> None:
    deploy = _built_in("deploy")
    form = LaunchForm.of([
        ("var.deploy_release_overrides.key", " worker "), ("var.deploy_release_overrides.value", "v2 "),
        ("var.deploy_release_overrides.key", ""), ("var.deploy_release_overrides.value", ""),
        ("var.deploy_serial", "50%"), ("var.deploy_note", "  "),
    ])
    assert form.extra_vars(fields_of(deploy)) == {"deploy_release_overrides": {"worker": "v2"}, "deploy_serial": "50%"}
    assert LaunchForm.of([("var.deploy_serial", "[1, 2]")]).extra_vars(fields_of(deploy)) == {"deploy_serial": [1, 2]}
    # What is no number stays text: the schema, not the form, refuses it.
    action = Action("a", Path("a.yml"), extra_vars_schema={"type": "object", "properties": {
        "n": {"type": "integer"}, "x": {"type": "number"}, "b": {"type": "boolean", "default": False},
        "t": {"type": "boolean"}, "e": {"enum": [1, 2]}}})
    fields = fields_of(action)
    read = LaunchForm.of([("var.n", "3"), ("var.x", "0.5"), ("var.b", "false"), ("var.b", "true"), ("var.t", ""),
                          ("var.e", "2")]).extra_vars(fields)
    assert read == {"n": 3, "x": 0.5, "b": True, "e": 2}
    assert LaunchForm.of([("var.n", "three"), ("var.b", "false")]).extra_vars(fields) == {"n": "three", "b": False}
    for items, message in (
            ([("var.deploy_release_overrides.key", "web"), ("var.deploy_release_overrides.value", "v1"),
              ("var.deploy_release_overrides.key", "web"), ("var.deploy_release_overrides.value", "v2")],
             "'web' is given twice"),
            ([("var.deploy_serial", "2"), ("extra_vars", "deploy_serial: 3")], "deploy_serial is given twice"),
            ([("var.deploy_serial", "[&a 1, *a]")], "deploy_serial, line 1: YAML anchors"),
            ([("extra_vars", "- a list")], "write name: value pairs")):
        with pytest.raises(ConsoleError, match=re.escape(message)):
            LaunchForm.of(items).extra_vars(fields_of(deploy))
