"""Schedules (config: environments.<name>.schedules): actions the console launches by itself at the minutes
of a cron expression, as an admin of that environment only, through the checks a person's launch passes.

A console of its own, beside the shared one: on `fleet` a deploy of v1.2.0 every minute; on `staging` a
deploy of a release the registry does not have, every minute (each minute refused, and audited), and one
for 31 February (never); on `gated`, whose deploys wait for an approval, a deploy every minute (one
pending job, then skipped minutes). The test waits for two minutes to come: up to about 2.5 min.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import PASSWORDS, Client, FakeRegistry, Server, cli, start_server, write_config

SCHEDULES = {
    "fleet": [{"name": "every-minute", "action": "deploy", "cron": "* * * * *", "release": "v1.2.0",
               "extra_vars": {"fixture_step": 0}}],
    "staging": [{"name": "missing-release", "action": "deploy", "cron": "* * * * *", "release": "v9.9.9"},
                {"name": "leap", "action": "deploy", "cron": "0 0 31 2 *", "release": "v1.2.0"}],
    "gated": [{"name": "every-minute", "action": "deploy", "cron": "* * * * *", "release": "v1.2.0"}],
}


def config_with(root: Path, registry: FakeRegistry, schedules: dict[str, list[dict[str, Any]]]) -> Path:
    config = write_config(root, registry.url, None)
    data = json.loads(config.read_text())
    # Deploys here wait for a second person: a schedule's pending job must not be joined by another.
    data["environments"]["gated"] = {"inventory": "inventories/fleet", "approval": {"actions": ["deploy"]}}
    for environment, entries in schedules.items():
        data["environments"][environment]["schedules"] = entries
    config.write_text(json.dumps(data))
    return config


@pytest.fixture(scope="module")
def scheduled(tmp_path_factory: pytest.TempPathFactory, registry: FakeRegistry) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("schedules")
    config = config_with(root, registry, SCHEDULES)
    for name, role, scope in (("admin", "admin", None), ("stager", "deployer", "staging")):
        made = cli(config, "create-user", name, "--role", role, "--password-stdin",
                   *(["--environments", scope] if scope else []), stdin=PASSWORDS[name] + "\n")
        assert made.returncode == 0, made.stderr
    server = start_server(root, config)
    yield server
    server.stop()


def test_a_schedule_launches_its_job_at_its_minute_and_a_refused_minute_is_audited(scheduled: Server) -> None:
    admin = Client(scheduled, "admin")
    listed = {s["actor"]: s for s in admin.get("/api/schedules").json()}
    assert sorted(listed) == ["schedule:fleet/every-minute", "schedule:gated/every-minute",
                              "schedule:staging/leap", "schedule:staging/missing-release"]
    assert listed["schedule:staging/leap"]["next_run"] is None
    assert listed["schedule:fleet/every-minute"]["next_run"].endswith("+00:00")
    page = admin.get("/").text
    assert "Scheduled: deploy v1.2.0 at <code>* * * * *</code>" in page

    deadline = time.monotonic() + 150
    while not (jobs := [j for j in admin.get("/api/jobs", params={"environment": "fleet"}).json()
                        if j["launched_by"] == "schedule:fleet/every-minute"]):
        assert time.monotonic() < deadline, "no scheduled job started within two minutes"
        time.sleep(1)
    job = admin.wait(jobs[-1]["id"])
    assert (job["status"], job["release"], job["action"]) == ("successful", "v1.2.0", "deploy"), job
    assert job["extra_vars"] == {"fixture_step": 0, "release": "v1.2.0"}

    while not (skips := admin.get("/api/audit", params={"action": "schedule_skip"}).json()):
        assert time.monotonic() < deadline, "the refused schedule left no audit entry"
        time.sleep(1)
    missing = [e for e in skips if e["actor"] == "schedule:staging/missing-release"]
    assert missing and "not in the registry" in missing[0]["detail"]["reason"], skips
    assert not [j for j in admin.get("/api/jobs", params={"environment": "staging"}).json()
                if j["launched_by"].startswith("schedule:")]
    launches = admin.get("/api/audit", params={"action": "job_launch", "actor": "schedule:fleet/every-minute"}).json()
    assert launches and launches[-1]["detail"]["environment"] == "fleet"

    # On the gated environment the first minute left a pending job; the next ones launch nothing more.
    while not (waits := [e for e in admin.get("/api/audit", params={"action": "schedule_skip"}).json()
                         if e["actor"] == "schedule:gated/every-minute"]):
        assert time.monotonic() < deadline + 60, "the gated schedule never skipped a minute"
        time.sleep(1)
    pending = [j for j in admin.get("/api/jobs", params={"environment": "gated"}).json()]
    assert [j["status"] for j in pending] == ["pending"], pending
    assert waits[0]["detail"]["reason"] == f"its job {pending[0]['id']} has not ended yet", waits[0]

    # A person scoped to staging sees staging's schedules only.
    stager = Client(scheduled, "stager")
    assert sorted(s["name"] for s in stager.get("/api/schedules").json()) == ["leap", "missing-release"]


@pytest.mark.parametrize("entry, says", [
    ({"name": "x", "action": "deploy", "cron": "61 * * * *"}, "environments/fleet/schedules/0/cron: minute '61'"),
    ({"name": "x", "action": "explode", "cron": "* * * * *"}, "environments/fleet/schedules/0/action: unknown action"),
    ({"name": "x y", "action": "deploy", "cron": "* * * * *"}, "schedules/0/name"),
])
def test_a_bad_schedule_stops_the_console_at_start_naming_it(tmp_path: Path, registry: FakeRegistry,
                                                            entry: dict[str, Any], says: str) -> None:
    config = config_with(tmp_path, registry, {"fleet": [entry]})
    done = cli(config, "migrate")
    assert done.returncode != 0 and says in done.stderr, done.stderr
