"""Zero-downtime deploys on a lab of its own, with a load generator running for the whole deploy.

The lab (lab_name fdci, LB on 127.0.0.1:28080) has no monitor host; it starts with three app hosts and
grows to four under load. The one-host case is app1 serving alone (the others out of HAProxy) and
swapped without any help from the load balancer. All traffic goes to 127.0.0.1.

The lab's inventory is the local environment's group_vars, with the demo service in place of the
application's (tests/fixtures/demo_lab/services.yml), plus a vault.yml of its own, encrypted with
ansible-vault: the demo service's secret environment holds a canary, a random value that must reach the
service's containers and no output, event or stored row on the way.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import docker
import pytest
import yaml

from console_server import CONSOLE, Server, chromium_page, sign_in, start_server
from fleetdeploy.loadgen import LoadGenerator, Result
from helpers import (DEMO_SERVICES, REPO, SLOT_SUFFIX, VENV_BIN, Run, container_events, env, link_demo_group_vars,
                     playbook, slot_port)
from helpers import run as run_command

pytestmark = [pytest.mark.lab, pytest.mark.slow]

LAB = f"fdci{SLOT_SUFFIX}"
HTTP_PORT = slot_port(28080)
REGISTRY_PORT = slot_port(25443)
UNHEALTHY_BUILD = "tests/fixtures/unhealthy_demo/build.yml"
RATE = 60  # requests per second, over keep-alive connections, a quarter of them POSTs
# The demo service's secret variable in the lab's vault.yml; no name the console's redactor masks by its key.
CANARY_VARIABLE = "DEMO_CANARY"


class Lab:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.inventory = root / "inventory"
        self.client = docker.from_env()
        self.vault_password_file = root / "vault-password"
        self.canary = f"fdcanary-{secrets.token_hex(16)}"

    def write_inventory(self) -> None:
        """The local environment's group_vars, file by file (a developer's own vault.yml left out), and a
        vault.yml encrypted with a password of the lab's own, holding the canary as the demo's secret."""
        link_demo_group_vars(self.inventory)
        self.vault_password_file.write_text(secrets.token_urlsafe(24) + "\n")
        plain = yaml.safe_dump({"vault_deploy_secrets": {"demo": {CANARY_VARIABLE: self.canary}}})
        encrypted = subprocess.run([str(VENV_BIN / "ansible-vault"), "encrypt", "--vault-password-file",
                                    str(self.vault_password_file), "--output", "-", "-"],
                                   input=plain, capture_output=True, text=True, env=env(), timeout=120, check=False)
        assert encrypted.returncode == 0, encrypted.stderr
        (self.inventory / "group_vars" / "all" / "vault.yml").write_text(encrypted.stdout)

    def canary_lines(self, text: str) -> list[str]:
        """The lines that hold the canary, the canary masked: a failing assert shows where, never the value."""
        return [line.replace(self.canary, "<canary>") for line in text.splitlines() if self.canary in line]

    def container_has_canary(self, host: str, service: str = "demo") -> bool:
        """Whether the service's running container on the host has the canary in its environment."""
        name = self.exec(host, "docker", "ps", "--filter", f"label=org.fleetdeploy.service={service}",
                         "--format", "{{.Names}}").split()[0]
        environment = self.exec(host, "docker", "exec", name, "env").splitlines()
        return f"{CANARY_VARIABLE}={self.canary}" in environment

    def lab_vars(self, app_hosts: int) -> dict[str, object]:
        return {
            "lab_name": LAB,
            "lab_app_hosts": app_hosts,
            # Deploys need no monitor host; the monitoring has scenarios of its own (molecule/monitoring).
            "lab_monitor_host": False,
            # The demo service needs no PostgreSQL, Redis or S3.
            "lab_data_host": False,
            # This lab's deploys are the suite's longest chain: when the CPU is short, its hosts go first.
            "lab_cpu_shares": 4096,
            "lab_ssh_port_base": slot_port(2400),
            "lab_http_port": HTTP_PORT,
            "lab_https_port": slot_port(28443),
            "lab_registry_port": REGISTRY_PORT,
            "lab_state_dir": str(self.root / "state"),
            "lab_inventory_file": str(self.inventory / "hosts.yml"),
        }

    def play(self, path: str, *args: str, **extra_vars: object) -> Run:
        # Facts are cached by host name, and the dev lab has an app1 too: this lab keeps its own cache.
        return playbook(path, "-i", str(self.inventory), *args, extra_vars=extra_vars or None,
                        FLEETDEPLOY_ACTOR="pytest", ANSIBLE_CACHE_PLUGIN_CONNECTION=str(self.root / "facts"),
                        ANSIBLE_VAULT_PASSWORD_FILE=str(self.vault_password_file))

    def run_through_runner(self, path: str, limit: str, **extra_vars: object) -> tuple[str, list[dict]]:
        """The playbook as the console runs it: ansible_runner.run at the default verbosity, with the vault
        password as a file. Returns runner's status and every event it raised (also kept in its artifacts)."""
        import ansible_runner

        events: list[dict] = []
        private = self.root / "runner"
        shutil.rmtree(private, ignore_errors=True)
        private.mkdir()
        runner = ansible_runner.run(
            private_data_dir=str(private), project_dir=str(REPO), playbook=path, inventory=str(self.inventory),
            limit=limit, extravars=extra_vars, cmdline=f"--vault-password-file {self.vault_password_file}",
            envvars={"PATH": env()["PATH"], "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "FLEETDEPLOY_ACTOR": "pytest",
                     "ANSIBLE_CACHE_PLUGIN_CONNECTION": str(self.root / "facts")},
            quiet=True, event_handler=lambda event: events.append(event) or True)
        return runner.status, events

    def grow(self, app_hosts: int, *site_args: str) -> Run:
        playbook("playbooks/lab.yml", extra_vars=self.lab_vars(app_hosts)).check()
        return self.play("site.yml", *site_args).check()

    def exec(self, host: str, *cmd: str) -> str:
        container = self.client.containers.get(f"{LAB}-lab-{host}")
        result = container.exec_run(list(cmd))
        return result.output.decode()

    def read(self, host: str, *cmd: str) -> str:
        """The output of a command that always prints something and changes nothing: asked again (up to
        three times) when Docker hands back no output at all, as its exec did once under a loaded suite."""
        for _ in range(3):
            if output := self.exec(host, *cmd):
                return output
            time.sleep(1)
        return ""

    def hosts(self) -> list[str]:
        found = self.client.containers.list(filters={"label": f"org.fleetdeploy.lab={LAB}"})
        return sorted(c.labels["org.fleetdeploy.host"] for c in found)

    def app_hosts(self) -> list[str]:
        return [host for host in self.hosts() if host.startswith("app")]

    def release_on(self, host: str) -> str:
        # Read again when the exec hands back nothing (a full run's release_on once got no output at all).
        answer = self.read(host, "curl", "-sS", "--max-time", "5", "http://127.0.0.1:80/version")
        try:
            return str(json.loads(answer)["release"])
        except ValueError:
            raise AssertionError(f"{host}'s /version answered {answer[:300]!r}") from None

    def record(self, host: str, service: str = "demo") -> dict:
        return json.loads(self.exec(host, "cat", f"/var/lib/fleetdeploy/releases/{service}.json"))

    def audit(self) -> tuple[list[dict], list[dict]]:
        """The audit records on the ops host: the file's lines, and the journal's fleetdeploy-audit entries."""
        lines = self.exec("ops1", "cat", "/var/log/fleetdeploy/audit.log").splitlines()
        entries = self.exec("ops1", "journalctl", "--no-pager", "--all", "-o", "json",
                            "SYSLOG_IDENTIFIER=fleetdeploy-audit").splitlines()
        return ([json.loads(line) for line in lines if line.startswith("{")],
                [json.loads(line) for line in entries if line.startswith("{")])

    def lock(self) -> dict | None:
        text = self.exec("ops1", "cat", "/var/lib/fleetdeploy/deploy.lock")
        return json.loads(text) if text.startswith("{") else None

    def console(self, root: Path, user: str, password: str) -> Server:
        """The deploy console with this lab as its one environment, and a deployer to sign in as."""
        ca = root / "registry-ca.crt"
        ca.write_text(self.exec("ops1", "cat", "/etc/docker-registry/tls/ca.crt"))
        config = root / "console.yml"
        config.write_text(json.dumps({  # JSON is YAML
            "project_dir": str(REPO),
            "data_dir": str(root / "data"),
            "ansible_config": str(REPO / "ansible.cfg"),
            "envvars": {"ANSIBLE_CACHE_PLUGIN_CONNECTION": str(self.root / "facts")},
            "environments": {LAB: {"inventory": str(self.inventory), "description": "the deploy tests' lab"}},
            "vault": {"password_file": str(self.vault_password_file)},
            "actions": {"deploy": {"playbook": "deploy.yml", "service": "demo",
                                   "release": {"variable": "release", "repository": "demo"}}},
            "registry": {"url": f"https://127.0.0.1:{REGISTRY_PORT}", "username": "fleetdeploy",
                         "password_file": str(self.root / "state" / "registry_password"), "ca_file": str(ca)},
        }))
        created = subprocess.run([str(CONSOLE), "create-user", user, "--role", "deployer", "--password-stdin",
                                  "--config", str(config)], input=password + "\n", capture_output=True, text=True,
                                 env=env(), timeout=120, check=False)
        assert created.returncode == 0, created.stderr
        return start_server(root, config, env())

    def under_load(self, path: str, *args: str, **extra_vars: object) -> tuple[Run, Result]:
        with LoadGenerator("127.0.0.1", HTTP_PORT, rate=RATE, connections=4) as load:
            time.sleep(2)  # steady state before the deploy starts
            run = self.play(path, *args, **extra_vars)
            time.sleep(2)
        return run, load.result


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("deploylab")
    lab = Lab(root)
    lab.inventory.mkdir()
    # The local environment's group_vars with the demo service alone, and a vault.yml of its own.
    lab.write_inventory()
    playbook("playbooks/lab_destroy.yml", extra_vars=lab.lab_vars(1)).check()
    lab.grow(3)
    for release in ("v1", "v2"):
        # A developer's checkout may hold uncommitted changes; CI's clean clone builds either way.
        lab.play("playbooks/build.yml", release=release, build_allow_dirty=True).check()
    # Failing releases come from a test-only build: the production build path has no such knob.
    lab.play(UNHEALTHY_BUILD, release="bad", from_release="v1", unhealthy_on="true").check()
    lab.play(UNHEALTHY_BUILD, release="bad-on-app2", from_release="v1", unhealthy_on="app2").check()
    lab.play("deploy.yml", release="v1").check()
    yield lab
    playbook("playbooks/lab_destroy.yml", extra_vars=lab.lab_vars(4))
    shutil.rmtree(root, ignore_errors=True)


def assert_no_failures(result: Result) -> None:
    assert result.requests >= 50, result.summary()
    assert result.rate >= 50 * 0.9, result.summary()
    assert result.failures == [], result.summary()


def assert_one_audit_record(lab: Lab, before: tuple[list[dict], list[dict]], action: str, result: str,
                            hosts: dict[str, str]) -> dict:
    """The run since `before` left exactly one complete record, the same in the file and in the journal.
    The file is appended to, so its new lines are those past `before`'s; the journal's new entries are told
    by their run id, those of no record the file held before: in one CI run the read before a deploy lacked
    five entries the file held (journald under load; rotating its file, most likely), and counting by
    position then took five old entries for new ones. A read that lacks an entry the file has is read again, for 30 s at most."""
    known = {record["run_id"] for record in before[0]}
    for _ in range(30):
        files, journal = lab.audit()
        new_files = files[len(before[0]):]
        new_entries = [entry for entry in journal if entry.get("RUN_ID") not in known]
        if {entry.get("RUN_ID") for entry in journal} >= {record["run_id"] for record in files}:
            break
        time.sleep(1)
    assert len(new_files) == 1 and len(new_entries) == 1, (new_files, new_entries)
    record, entry = new_files[0], new_entries[0]
    assert {"environment", "action", "release", "user", "run_id", "started", "ended", "result", "hosts"} <= set(record)
    assert (record["action"], record["result"], record["user"], record["hosts"]) == (action, result, "pytest", hosts), record
    assert record["environment"] == "local" and record["run_id"] and record["started"] <= record["ended"], record
    assert json.loads(entry["AUDIT_RECORD"]) == record
    assert (entry["ACTION"], entry["RELEASE"], entry["ACTOR"], entry["RESULT"], entry["RUN_ID"]) == (
        action, record["release"], "pytest", result, record["run_id"])
    assert entry["HOSTS"] == " ".join(f"{host}={outcome}" for host, outcome in sorted(hosts.items()))
    return record


def haproxy(lab: Lab, command: str) -> str:
    return lab.exec("lb1", "sh", "-c", f"echo '{command}' | socat stdio /run/haproxy/admin.sock")


def test_one_host_serving_alone_deploys_with_zero_failed_requests(lab: Lab) -> None:
    """A one-host fleet: app1 takes all the traffic and never leaves the load balancer (provider none);
    the swap on the host alone (new container, health check, nginx reload, drain) must lose nothing."""
    assert lab.hosts() == ["app1", "app2", "app3", "lb1", "ops1"]  # lab_monitor_host: false
    for host in ("app2", "app3"):
        haproxy(lab, f"set server app/{host} state maint")
    try:
        run, load = lab.under_load("deploy.yml", "--limit", "app1,ops1", release="v2", deploy_lb_provider="none")
        run.check()
    finally:
        for host in ("app2", "app3"):
            haproxy(lab, f"set server app/{host} state ready")
    assert_no_failures(load)
    assert lab.release_on("app1") == "v2"
    assert set(load.releases) <= {"v1", "v2"}


def test_a_deploy_launched_in_the_console_rolls_the_lab_host_by_host(lab: Lab, tmp_path: Path) -> None:
    """The console end to end in Chromium: sign in, pick a release the lab's registry holds, launch the
    real deploy.yml, watch the app hosts' rows turn green, and read each host's release on the dashboard.
    app1 runs v2 after the one-host test, app2 and app3 v1; the deploy puts v1 everywhere, under load.
    The demo's vault secret reaches app1's new container, and no file of the console (its database, its
    runs' artifacts, its log, the browser's cache) nor any page or API answer it served holds it."""
    from playwright.sync_api import Page, expect

    password = "deployer-password-1234"
    console = lab.console(tmp_path, "deployer", password)
    try:
        with chromium_page(tmp_path / "chromium") as page, \
                LoadGenerator("127.0.0.1", HTTP_PORT, rate=RATE, connections=4) as load:
            assert isinstance(page, Page)
            sign_in(page, console.url, "deployer", password)
            page.goto(f"{console.url}/launch?action=deploy&environment={LAB}")
            assert {"v1", "v2", "bad"} <= set(page.locator("select[name=release] option").all_inner_texts())
            page.select_option("select[name=release]", "v1")
            page.click("#review-button")
            expect(page.locator("#confirm-env-name")).to_have_text(LAB)
            page.click("#launch-button")
            expect(page).to_have_url(re.compile(r"/jobs/\d+$"))
            job = page.url.rsplit("/", 1)[1]
            expect(page.locator("#grid td.cell.running").first).to_be_visible()
            expect(page.locator("#job-status")).to_have_text("successful", timeout=900_000)
            for host in ("app1", "app2", "app3"):
                expect(page.locator(f"#grid tr[data-host={host}] td.result")).to_have_attribute(
                    "data-result", re.compile("^(ok|changed)$"))
            expect(page.locator("#grid tr[data-host=app1] td.result")).to_have_attribute("data-result", "changed")
            expect(page.locator("#grid td.cell.failed")).to_have_count(0)
            expect(page.locator("#log")).to_contain_text("PLAY RECAP")
            page.click("header a.brand")
            card = page.locator(f"#env-{LAB}")
            releases = card.locator("table.releases")
            for host in ("app1", "app2", "app3"):
                row = releases.locator("tr", has=page.locator("td", has_text=re.compile(f"^{host}$")))
                expect(row.locator("td.release")).to_have_text("v1")
            expect(releases.locator("td", has_text="ops1")).to_have_count(0)
            served = {path: page.request.get(f"{console.url}{path}").text() for path in (
                "/", "/jobs", f"/jobs/{job}", "/api/jobs", f"/api/jobs/{job}", f"/api/jobs/{job}/events")}
    finally:
        console.stop()
    assert all(len(text) > 100 for text in served.values()), {path: len(text) for path, text in served.items()}
    assert [path for path, text in served.items() if lab.canary in text] == []
    assert lab.container_has_canary("app1")
    stored = [str(f.relative_to(tmp_path)) for f in tmp_path.rglob("*") if f.is_file() and lab.canary.encode() in f.read_bytes()]
    assert stored == [], "the console stored the secret"
    assert (tmp_path / "data").is_dir() and any((tmp_path / "data").rglob("*.db*")), "no database file looked at"
    assert_no_failures(load.result)
    assert [lab.release_on(h) for h in lab.app_hosts()] == ["v1", "v1", "v1"]
    assert lab.record("app1")["history"][0]["user"] == "console:deployer"


def test_a_services_vault_secret_reaches_its_container_and_no_output_or_event(lab: Lab) -> None:
    """The demo's secret travels vault -> playbooks -> a 0600 env file -> the container, and shows in no line
    of deploy.yml and rollback.yml at -vvv nor in any event of ansible-runner (how the console runs them).
    A service that still carries its secrets in deploy_services (secret_env) is refused before anything
    changes, without showing them. After the console's deploy every host runs v1; each run here swaps app1
    (v1 -> v2 -> v1 -> v2), and the fleet's records end as the console's deploy left them but for app1 on v2."""
    services = yaml.safe_load(DEMO_SERVICES.read_text())
    old_style = [dict(service, secret_env={CANARY_VARIABLE: lab.canary}) for service in services["deploy_services"]]
    refused = lab.play("deploy.yml", "-vvv", "--limit", "app1,ops1", release="v2", deploy_services=old_style)
    assert refused.returncode != 0
    assert "still carry secret_env" in refused.output and "vault_deploy_secrets" in refused.output
    assert set(refused.recap()) == {"ops1"}, "no app host may be touched"
    assert lab.canary_lines(refused.output) == []

    for path, args in (("deploy.yml", {"release": "v2"}), ("rollback.yml", {})):
        run = lab.play(path, "-vvv", "--limit", "app1,ops1", **args)
        assert run.returncode == 0, f"{path} failed:\n" + run.output[-6000:].replace(lab.canary, "<canary>")
        assert run.recap()["app1"]["changed"] > 0, f"{path} did not swap app1"
        assert lab.canary_lines(run.output) == [], f"{path} -vvv shows the secret"
        assert lab.container_has_canary("app1"), f"after {path}, app1's demo container lacks its secret"
    assert lab.read("app1", "stat", "-c", "%a %U", "/etc/fleetdeploy/env/demo.env").split() == ["600", "root"]

    status, events = lab.run_through_runner("deploy.yml", "app1,ops1", release="v2")
    assert status == "successful"
    assert any(e.get("event") == "runner_on_ok" and e["event_data"].get("host") == "app1"
               and e["event_data"].get("res", {}).get("changed") for e in events), "the runner's deploy swapped nothing"
    leaking = [f"{e.get('event')} {e.get('event_data', {}).get('task', '')}" for e in events
               if lab.canary in json.dumps(e)]
    assert leaking == [], f"{len(leaking)} of {len(events)} runner events hold the secret"
    artifacts = [str(f) for f in (lab.root / "runner").rglob("*") if f.is_file() and lab.canary.encode() in f.read_bytes()]
    assert artifacts == []
    assert lab.container_has_canary("app1") and lab.release_on("app1") == "v2"


def test_three_hosts_go_from_v1_to_v2_with_zero_failed_requests(lab: Lab) -> None:
    lab.play("deploy.yml", release="v1").check()
    before = lab.audit()
    run, load = lab.under_load("deploy.yml", release="v2")
    run.check()
    assert_no_failures(load)
    assert [lab.release_on(h) for h in lab.app_hosts()] == ["v2", "v2", "v2"]
    record = assert_one_audit_record(lab, before, "deploy", "ok", {"app1": "changed", "app2": "changed",
                                                                  "app3": "changed"})
    assert record["release"] == "v2" and record["images"]["demo:v2"].startswith("sha256:"), record
    # The commit the image was built from, read from its labels in the registry: the lab builds this checkout's HEAD.
    head = subprocess.run(["git", "-C", str(REPO), "show", "--no-patch", "--format=%H %cI", "HEAD"],
                          capture_output=True, text=True, check=True).stdout.split()
    assert record["revisions"] == {"demo:v2": {"revision": head[0], "committed": head[1]}}, record
    version = json.loads(lab.exec("lb1", "curl", "-sS", "http://127.0.0.1:8080/version"))
    assert version == {"release": "v2"}
    record = lab.record("app2")
    assert (record["current"], record["previous"]) == ("v2", "v1")
    assert record["history"][0]["user"] == "pytest" and record["history"][0]["result"] == "ok"
    # The dashboards' deploy marker, read by node_exporter's textfile collector.
    marker = lab.exec("app2", "cat", "/var/lib/prometheus/node-exporter/fleetdeploy_release_demo.prom")
    sample = re.search(r'^fleetdeploy_release_timestamp_seconds\{service="demo",version="v2"\} (\d+)$', marker, re.M)
    assert sample and abs(int(sample.group(1)) - time.time()) < 600, marker


def test_a_redeploy_of_the_same_release_changes_nothing(lab: Lab) -> None:
    run = lab.play("deploy.yml", release="v2").check()
    assert {host: counts["changed"] for host, counts in run.recap().items()} == {
        host: 0 for host in run.recap()
    }, run.output[-3000:]


def service_containers(lab: Lab) -> dict[str, list[str]]:
    """Per app host, the full IDs of the services' containers, running or not."""
    return {host: sorted(lab.exec(host, "docker", "ps", "--all", "--quiet", "--no-trunc", "--filter",
                                  "label=org.fleetdeploy.service").split()) for host in lab.app_hosts()}


def release_task(name: str, script: str, **keys: object) -> dict[str, object]:
    """A release task of the demo service: a Python script run by the demo image's own python3."""
    return {"name": name, "service": "demo", "command": ["python3", "-c", script], **keys}


def test_a_failing_release_task_stops_the_deploy_before_any_host_changes(lab: Lab) -> None:
    """The fleet on v2; a deploy of v1 whose migration fails (after checking that the demo's vault secret
    reached it): under load, zero failed requests, no host changed (container IDs and release records),
    the message carries the task's own last lines, and the audit record its output; at -vvv no line shows
    the secret. A task that outlasts its timeout is killed and stops the deploy the same way; a task that
    succeeds runs once, before a deploy that changes no host, and its output reaches the audit record."""
    containers, records = service_containers(lab), {host: lab.record(host) for host in lab.app_hosts()}
    failing = release_task("migrate", "import os, sys; print('migrating: add column orders.note'); "
                                      f"assert os.environ.get('{CANARY_VARIABLE}'), 'the secret did not reach the task'; "
                                      "print('ERROR: relation orders is locked', file=sys.stderr); sys.exit(3)")
    before = lab.audit()
    run, load = lab.under_load("deploy.yml", "-vvv", release="v1", deploy_release_tasks=[failing])
    assert run.returncode != 0
    assert_no_failures(load)
    message = " ".join(run.output.split())
    assert "Deploy of v1 stopped before any host changed: release task migrate failed" in message, run.output[-4000:]
    assert "exited 3" in message and "ERROR: relation orders is locked" in message, run.output[-4000:]
    assert lab.canary_lines(run.output) == [], "the release task's run shows the secret at -vvv"
    assert (service_containers(lab), {host: lab.record(host) for host in lab.app_hosts()}) == (containers, records)
    record = assert_one_audit_record(lab, before, "deploy", "failed", {host: "not reached" for host in lab.app_hosts()})
    (task,) = record["tasks"]
    assert (task["name"], task["host"], task["release"], task["exit_code"], task["timed_out"]) == (
        "migrate", "app1", "v1", 3, False), task
    assert "migrating: add column orders.note" in task["output"] and "ERROR: relation orders is locked" in task["output"]
    # Nothing of the task stays on its host: neither its container nor its env file with the secret.
    assert lab.exec("app1", "docker", "ps", "--all", "--quiet", "--filter", "label=org.fleetdeploy.release-task") == ""
    assert "No such file" in lab.exec("app1", "ls", "/etc/fleetdeploy/env/release-task-migrate.env")

    slow = release_task("warm-cache", "import time; print('warming', flush=True); time.sleep(600)", timeout=3)
    run = lab.play("deploy.yml", release="v1", deploy_release_tasks=[slow])
    assert run.returncode != 0
    message = " ".join(run.output.split())
    assert "release task warm-cache failed" in message and "ran out of its timeout of 3 s" in message, run.output[-4000:]
    assert "warming" in message
    assert lab.exec("app1", "docker", "ps", "--all", "--quiet", "--filter", "label=org.fleetdeploy.release-task") == ""

    before = lab.audit()
    passing = release_task("migrate", "print('migrated: orders.note added')")
    lab.play("deploy.yml", release="v2", deploy_release_tasks=[passing]).check()
    record = assert_one_audit_record(lab, before, "deploy", "ok", {host: "unchanged" for host in lab.app_hosts()})
    assert [(t["name"], t["exit_code"], t["output"]) for t in record["tasks"]] == [
        ("migrate", 0, ["migrated: orders.note added"])], record["tasks"]
    assert (service_containers(lab), {host: lab.record(host) for host in lab.app_hosts()}) == (containers, records)


def test_a_worker_starts_before_its_old_copy_stops_and_a_singleton_never_runs_twice(lab: Lab) -> None:
    """Two workers from the demo image (its server stands in for a queue consumer: on SIGTERM it finishes
    what it holds and exits 0): `consumer` on every app host, and `scheduler`, a singleton. Deployed at v1
    (the demo kept at v2), then v2 under load, every host at once: on every host the new consumer starts before the old one
    gets SIGTERM, and the old one exits 0 within its grace period; the scheduler runs on app1 alone, and
    its old copy has exited before the new one starts. Zero failed requests throughout."""
    services = yaml.safe_load(DEMO_SERVICES.read_text())
    demo = services["deploy_services"][0]
    common = {key: demo[key] for key in ("image", "group", "env", "memory", "cpus", "tmpfs")}
    workers = [dict(common, name="consumer", kind="worker", stop_grace_period=10),
               dict(common, name="scheduler", kind="worker", singleton=True, stop_grace_period=10)]
    with_workers = [demo, *workers]
    try:
        # Every host at once (a batch of 100%): only workers change, which no host drains for.
        lab.play("deploy.yml", release="v1", deploy_services=with_workers, deploy_release_overrides={"demo": "v2"},
                 deploy_serial="100%").check()
        with container_events(lab.exec, lab.app_hosts()) as events:
            run, load = lab.under_load("deploy.yml", release="v2", deploy_services=with_workers, deploy_serial="100%")
        run.check()
        assert_no_failures(load)
        for host in lab.app_hosts():
            consumer = events.get((host, "consumer"), [])
            assert [(action, name) for action, name, _ in consumer] == [
                ("start", "consumer-b"), ("kill", "consumer-a"), ("die", "consumer-a")], (host, consumer)
            assert consumer[-1][2] == "0", (host, consumer)  # a clean exit on SIGTERM, not a SIGKILL (137)
            running = lab.exec(host, "docker", "ps", "--filter", "label=org.fleetdeploy.service=scheduler",
                               "--format", "{{.Names}} {{.Label \"org.fleetdeploy.release\"}}").split("\n")
            scheduler = events.get((host, "scheduler"), [])
            if host == "app1":
                assert running[0] == "scheduler-b v2", running
                assert [(action, name) for action, name, _ in scheduler] == [
                    ("kill", "scheduler-a"), ("die", "scheduler-a"), ("start", "scheduler-b")], scheduler
            else:
                assert running == [""] and scheduler == [], (host, running, scheduler)
        assert [lab.record("app1", service)["current"] for service in ("consumer", "scheduler")] == ["v2", "v2"]
    finally:
        for host in lab.app_hosts():
            for service in ("consumer", "scheduler"):
                lab.exec(host, "sh", "-c", f"docker rm -f $(docker ps -aq --filter label=org.fleetdeploy.service={service}) "
                                           f"; rm -f /var/lib/fleetdeploy/releases/{service}.json "
                                           f"/var/lib/prometheus/node-exporter/fleetdeploy_release_{service}.prom")


def test_the_deployed_containers_run_read_only_with_limits_and_a_health_check(lab: Lab) -> None:
    """What docker-bench-security checks of the containers the deploy started (4.6, 5.13, 5.25, 5.26,
    5.27, 5.29; docs/security.md): a read-only root with a tmpfs /tmp, a PIDs limit, no capabilities, no
    new privileges, and the image's HEALTHCHECK, which Docker reports healthy."""
    for host in lab.app_hosts():
        name = lab.exec(host, "docker", "ps", "--filter", "label=org.fleetdeploy.service=demo",
                        "--format", "{{.Names}}").strip()
        (container,) = json.loads(lab.exec(host, "docker", "inspect", name))
        settings = container["HostConfig"]
        seen = {
            "ReadonlyRootfs": settings["ReadonlyRootfs"],
            "Tmpfs": sorted(settings.get("Tmpfs") or {}),
            "PidsLimit": settings.get("PidsLimit"),
            "CapDrop": settings.get("CapDrop"),
            "SecurityOpt": settings.get("SecurityOpt"),
            "Healthcheck": (container["Config"].get("Healthcheck") or {}).get("Test", [""])[0],
        }
        assert seen == {"ReadonlyRootfs": True, "Tmpfs": ["/tmp"], "PidsLimit": 2048, "CapDrop": ["ALL"],
                        "SecurityOpt": ["no-new-privileges:true"], "Healthcheck": "CMD"}, (host, seen)
        # Docker's first probe runs one interval after the start: wait for its verdict.
        health = "starting"
        for _ in range(120):
            health = lab.exec(host, "docker", "inspect", "-f", "{{if .State.Health}}{{.State.Health.Status}}{{end}}",
                              name).strip()
            if health != "starting":
                break
            time.sleep(1)
        assert health == "healthy", (host, health)


def test_nginx_refusing_a_new_upstream_gets_the_old_one_back_and_keeps_serving(lab: Lab) -> None:
    upstream = "/etc/nginx/fleetdeploy/upstreams/demo.conf"
    before = lab.exec("app1", "cat", upstream)
    role = REPO / "roles" / "app_release"
    refused = run_command([str(VENV_BIN / "ansible"), "app1", "-i", str(lab.inventory), "--become",
                           "-M", str(role / "library"), "-m", "fleetdeploy_nginx_upstream",
                           "-a", json.dumps({"path": upstream, "content": "upstream fd_demo { no_such_directive; }\n"})],
                          ANSIBLE_MODULE_UTILS=str(role / "module_utils"),
                          ANSIBLE_VAULT_PASSWORD_FILE=str(lab.vault_password_file))
    assert refused.returncode != 0
    assert "nginx -t refused the new" in refused.output and "no_such_directive" in refused.output, refused.output
    assert lab.exec("app1", "cat", upstream) == before
    assert lab.release_on("app1") == "v2"


def test_moving_nginx_to_a_new_upstream_returns_once_its_old_workers_take_no_more_requests(lab: Lab) -> None:
    """`systemctl reload nginx` returns once the master is signalled, before it has read the new upstream and
    told its workers to stop; the drain after the move takes a worker that is not shutting down for one that
    takes no requests, so the move must not return before each old worker has exited or is shutting down.
    nginx's master is held stopped across the reload (8 s, then let go from the host) to widen that window."""
    upstream = "/etc/nginx/fleetdeploy/upstreams/demo.conf"
    before = lab.read("app1", "cat", upstream)
    master = lab.read("app1", "cat", "/run/nginx.pid").strip()

    def accepting(pids: list[str]) -> list[str]:
        return [pid for pid in pids
                if lab.exec("app1", "cat", f"/proc/{pid}/cmdline").rstrip("\0 ") == "nginx: worker process"]

    workers = accepting(lab.read("app1", "pgrep", "-P", master).split())
    assert workers, lab.exec("app1", "ps", "-eo", "pid,ppid,args")
    role = REPO / "roles" / "app_release"

    def move(content: str) -> Run:
        return run_command([str(VENV_BIN / "ansible"), "app1", "-i", str(lab.inventory), "--become",
                            "-M", str(role / "library"), "-m", "fleetdeploy_nginx_upstream",
                            "-a", json.dumps({"path": upstream, "content": content})],
                           ANSIBLE_MODULE_UTILS=str(role / "module_utils"),
                           ANSIBLE_VAULT_PASSWORD_FILE=str(lab.vault_password_file))

    host = lab.client.containers.get(f"{LAB}-lab-app1")
    lab.exec("app1", "kill", "-STOP", master)
    host.exec_run(["sh", "-c", f"sleep 8; kill -CONT {master}"], detach=True)
    try:
        moved = move(before + "# moved by the reload test\n")
        # Read while the master may still be stopped: the old code returned with every worker taking requests.
        still = accepting(workers)
    finally:
        lab.exec("app1", "kill", "-CONT", master)
    assert moved.returncode == 0, moved.output
    assert still == [], (still, lab.exec("app1", "ps", "-eo", "pid,ppid,args"))
    assert f"old_workers: {len(workers)}" in moved.output, moved.output
    assert move(before).returncode == 0
    assert lab.release_on("app1") == "v2"


def test_an_unhealthy_release_fails_clearly_and_the_fleet_keeps_serving(lab: Lab) -> None:
    before = lab.audit()
    run, load = lab.under_load("deploy.yml", release="bad", deploy_health_timeout=10)
    assert run.returncode != 0
    assert_no_failures(load)
    record = assert_one_audit_record(lab, before, "deploy", "failed", {"app1": "failed", "app2": "not reached",
                                                                      "app3": "not reached"})
    assert record["release"] == "bad" and record["failed"][0]["service"] == "demo", record
    message = " ".join(run.output.split())
    assert "host app1, service demo, release bad did not become healthy" in message, run.output[-4000:]
    assert "built with demo_unhealthy=true" in message  # the last health-check output
    assert [lab.release_on(h) for h in lab.app_hosts()] == ["v2", "v2", "v2"]
    running = lab.exec("app1", "docker", "ps", "--format", "{{.Image}}")
    assert ":bad" not in running
    assert lab.record("app1")["history"][0]["result"] == "failed"


def test_a_failure_in_a_later_batch_rolls_the_swapped_hosts_back(lab: Lab) -> None:
    # This release is healthy on app1 and not on app2: app1 swaps in the first batch, app2 fails in
    # the second, app3 is never touched, and auto-rollback returns app1 to v2 without a gap.
    run, load = lab.under_load("deploy.yml", release="bad-on-app2", deploy_health_timeout=10)
    assert run.returncode != 0
    assert_no_failures(load)
    assert "host app2, service demo, release bad-on-app2 did not become healthy" in " ".join(run.output.split())
    assert [lab.release_on(h) for h in lab.app_hosts()] == ["v2", "v2", "v2"]
    history = lab.record("app1")["history"]
    assert [(h["release"], h["action"], h["result"]) for h in history[:2]] == [
        ("v2", "rollback", "ok"), ("bad-on-app2", "deploy", "ok")]
    assert lab.record("app3")["history"][0]["release"] != "bad-on-app2"


def test_failures_within_max_fail_percentage_stay_behind_and_the_rollout_goes_on(lab: Lab) -> None:
    """deploy_max_fail_percentage as Ansible's max_fail_percentage: in batches of two with 50% allowed, app2
    failing in the first batch (1 of 2, not more than 50%) does not stop the rollout; app3 is swapped too,
    app2 stays on its old release, and the verdict and the audit log name it. The run still fails."""
    run, load = lab.under_load("deploy.yml", release="bad-on-app2", deploy_serial=2, deploy_max_fail_percentage=50,
                               deploy_health_timeout=10)
    assert run.returncode != 0
    assert_no_failures(load)
    message = " ".join(run.output.split())
    assert "went on to every batch (failures within deploy_max_fail_percentage 50%) but failed on 1 host(s)" in message, \
        run.output[-4000:]
    assert "host app2, service demo, release bad-on-app2 did not become healthy" in message
    assert [lab.release_on(h) for h in lab.app_hosts()] == ["bad-on-app2", "v2", "bad-on-app2"]
    assert lab.record("app1")["history"][0]["action"] == "deploy"  # not rolled back
    entry = json.loads(lab.exec("ops1", "tail", "-n", "1", "/var/log/fleetdeploy/audit.log"))
    assert (entry["result"], entry["failures"]) == ("partial", ["app2"]), entry
    assert {"app1", "app3"} <= set(entry["hosts_changed"]), entry
    # The fleet as the next tests expect it: every host on v2 with v1 as its previous release (a deploy
    # would make bad-on-app2 the previous release of app1 and app3, where the rollback test would return).
    lab.play("rollback.yml", release="v2").check()


def test_a_mistyped_release_fails_fast_and_changes_nothing(lab: Lab) -> None:
    run = lab.play("deploy.yml", release="v2-typo")
    assert run.returncode != 0
    assert "has no demo:v2-typo" in " ".join(run.output.split())
    assert set(run.recap()) == {"ops1"}, "no app host may be touched"
    # Fast by construction rather than by a clock: the registry's answer is final, so nothing waits and asks again.
    assert "FAILED - RETRYING" not in run.output
    assert [lab.release_on(h) for h in lab.app_hosts()] == ["v2", "v2", "v2"]
    # A service pinned to another tag is named with the tag it would have pulled, not the release's.
    pinned = lab.play("deploy.yml", release="v2", deploy_release_overrides={"demo": "v1-typo"})
    assert pinned.returncode != 0
    assert "has no demo:v1-typo" in " ".join(pinned.output.split()), pinned.output[-3000:]


def test_a_bad_container_setting_fails_the_preflight_and_changes_nothing(lab: Lab) -> None:
    services = yaml.safe_load(DEMO_SERVICES.read_text())
    bad = [dict(services["deploy_services"][0], pids_limit=0)]
    run = lab.play("deploy.yml", release="v2", deploy_services=bad)
    assert run.returncode != 0
    message = " ".join(run.output.split())
    assert "Service demo has a bad container setting" in message and "'pids_limit': 0" in message, run.output[-3000:]
    assert set(run.recap()) == {"ops1"}, "no app host may be touched"


def test_the_deploy_lock_refuses_a_second_deploy_and_expires(lab: Lab) -> None:
    lock = {"name": "local", "run_id": "someone-else", "holder": "alice", "action": "deploy v9", "since": time.time()}
    lab.exec("ops1", "sh", "-c", f"echo '{json.dumps(lock)}' > /var/lib/fleetdeploy/deploy.lock")
    run = lab.play("deploy.yml", release="v2")
    assert run.returncode != 0
    message = " ".join(run.output.split())
    assert "held by alice running 'deploy v9'" in message
    assert set(run.recap()) == {"ops1"}
    lab.play("deploy.yml", "-e", "deploy_force_unlock=true", release="v2").check()
    stale = dict(lock, since=time.time() - 7200)
    lab.exec("ops1", "sh", "-c", f"echo '{json.dumps(stale)}' > /var/lib/fleetdeploy/deploy.lock")
    lab.play("deploy.yml", release="v2").check()
    assert "No such file" in lab.exec("ops1", "cat", "/var/lib/fleetdeploy/deploy.lock")


def test_rollback_returns_the_fleet_to_the_previous_release_without_a_gap(lab: Lab) -> None:
    # As after a deploy killed in the middle of app1's swap: a container in the slot the rollback needs.
    serving = lab.exec("app1", "docker", "ps", "--filter", "label=org.fleetdeploy.service=demo",
                       "--format", "{{.Names}} {{.Image}}").split()
    free_slot = "demo-b" if serving[0] == "demo-a" else "demo-a"
    lab.exec("app1", "docker", "create", "--name", free_slot, "--label", "org.fleetdeploy.service=demo", serving[1])
    before = lab.audit()
    run, load = lab.under_load("rollback.yml")
    run.check()
    assert_no_failures(load)
    assert_one_audit_record(lab, before, "rollback", "ok", {"app1": "changed", "app2": "changed", "app3": "changed"})
    assert [lab.release_on(h) for h in lab.app_hosts()] == ["v1", "v1", "v1"]
    containers = lab.exec("app1", "docker", "ps", "--all", "--filter", "label=org.fleetdeploy.service=demo",
                          "--format", "{{.Names}} {{.Image}} {{.State}}").splitlines()
    assert containers == [f"{free_slot} {serving[1].rsplit(':', 1)[0]}:v1 running"], containers
    audit = lab.exec("ops1", "tail", "-n", "1", "/var/log/fleetdeploy/audit.log")
    entry = json.loads(audit)
    assert entry["action"] == "rollback" and entry["result"] == "ok" and entry["user"] == "pytest"


def test_growing_from_three_to_four_hosts_under_load(lab: Lab) -> None:
    """site.yml provisions app4 and swaps it to the fleet's release (at -vvv: the demo's vault secret reaches
    app4's container and no line of the output)."""
    before = lab.audit()
    with LoadGenerator("127.0.0.1", HTTP_PORT, rate=RATE) as load:
        site = lab.grow(4, "-vvv")
    assert_no_failures(load.result)
    # site.yml's run is audited: who ran it, when, on which hosts, and how it ended.
    assert_one_audit_record(lab, before, "site", "ok", {host: "ok" for host in lab.hosts()})
    # The fleet's current release, which the rollback before this test made v1 again.
    assert lab.release_on("app4") == "v1"
    assert lab.container_has_canary("app4"), "app4's demo container lacks its secret"
    assert lab.canary_lines(site.output) == [], "site.yml -vvv shows the secret"
    seen = set()
    for _ in range(40):
        seen.add(json.loads(lab.exec("lb1", "curl", "-sS", "http://127.0.0.1:8080/"))["host"])
    assert "app4" in seen, seen


def test_with_an_alb_each_host_leaves_its_target_groups_before_its_containers_change(lab: Lab) -> None:
    """lb_provider alb against moto's server: deregister (waiting out the real deregistration delay),
    swap, register and wait for healthy, host by host, in that order."""
    import boto3

    from moto_endpoint import MotoEndpoint

    with MotoEndpoint() as aws:
        os.environ.update(aws.env())
        try:
            ec2, elb = boto3.client("ec2"), boto3.client("elbv2")
            vpc = ec2.describe_vpcs()["Vpcs"][0]["VpcId"]
            image = ec2.describe_images()["Images"][0]["ImageId"]
            hosts = lab.app_hosts()
            ids = [i["InstanceId"] for i in ec2.run_instances(ImageId=image, MinCount=len(hosts),
                                                              MaxCount=len(hosts))["Instances"]]
            groups = []
            for name in ("web", "api"):
                arn = elb.create_target_group(Name=name, Protocol="HTTP", Port=80, VpcId=vpc,
                                              TargetType="instance")["TargetGroups"][0]["TargetGroupArn"]
                elb.modify_target_group_attributes(
                    TargetGroupArn=arn, Attributes=[{"Key": "deregistration_delay.timeout_seconds", "Value": "2"}])
                elb.register_targets(TargetGroupArn=arn, Targets=[{"Id": i, "Port": 80} for i in ids])
                groups.append(arn)
            host_vars = lab.inventory / "host_vars"
            host_vars.mkdir(exist_ok=True)
            for host, instance in zip(hosts, ids):
                (host_vars / f"{host}.yml").write_text(f"ec2_instance_id: {instance}\n")
            target = "v1" if lab.release_on(hosts[0]) == "v2" else "v2"
            # The deploy takes its lock in DynamoDB, as in AWS, and keeps its audit record there too.
            boto3.client("dynamodb").create_table(
                TableName="fleetdeploy-locks", BillingMode="PAY_PER_REQUEST",
                KeySchema=[{"AttributeName": "lock", "KeyType": "HASH"}],
                AttributeDefinitions=[{"AttributeName": "lock", "AttributeType": "S"}])
            before = lab.audit()
            deploy_started = time.time()  # the set-up above registered the targets too
            lab.play("deploy.yml", release=target, deploy_lb_provider="alb", deploy_lb_region="eu-west-1",
                     deploy_lock_backend="dynamodb", deploy_lock_table="fleetdeploy-locks",
                     deploy_lock_region="eu-west-1").check()
            items = boto3.client("dynamodb").scan(TableName="fleetdeploy-locks")["Items"]
        finally:
            for key in aws.env():
                os.environ.pop(key, None)
            shutil.rmtree(lab.inventory / "host_vars", ignore_errors=True)
        calls = aws.recorder.actions("DeregisterTargets", "RegisterTargets")
    assert [lab.release_on(h) for h in hosts] == [target] * len(hosts)
    record = assert_one_audit_record(lab, before, "deploy", "ok", {host: "changed" for host in hosts})
    # The lock was given back; the one audit record in DynamoDB is the ops host's.
    assert [json.loads(item["body"]["S"]) for item in items] == [record], items
    for host, instance in zip(hosts, ids):
        mine = [c for c in calls if c.time >= deploy_started and c.params.get("Targets.member.1.Id") == [instance]]
        deregistered = [c.time for c in mine if c.action == "DeregisterTargets"]
        registered = [c.time for c in mine if c.action == "RegisterTargets"]
        assert len(deregistered) == 2 and len(registered) == 2, (host, [c.action for c in mine])
        created = lab.exec(host, "docker", "inspect", "-f", "{{.Created}}", *[
            name for name in lab.exec(host, "docker", "ps", "--format", "{{.Names}}").split() if name.startswith("demo-")])
        from datetime import datetime

        started = datetime.fromisoformat(created.strip()[:26].rstrip("Z") + "+00:00").timestamp()
        assert max(deregistered) < started < min(registered), host


def test_a_deploy_longer_than_its_lock_ttl_keeps_its_lock_and_refuses_a_second(lab: Lab) -> None:
    """A TTL of 15 s and one host swap whose drain waits (up to 60 s) for a request the test keeps in flight
    to the old container (a connection to its port, the request's headers never finished): the heartbeat
    renews the lock every 5 s, so a second deploy started once the lock is older than its TTL is refused
    while the first runs; then the test lets the request go, the drain ends, and the first deploy finishes
    cleanly and gives the lock back."""
    ttl = 15
    target = "v1" if lab.release_on("app1") == "v2" else "v2"
    before = lab.audit()
    # On app1, to both of demo's host ports: only the running container's answers (the other is free).
    lab.client.containers.get(f"{LAB}-lab-app1").exec_run(["bash", "-c", (
        "for port in 8001 8002; do (exec 3<>/dev/tcp/127.0.0.1/$port && printf 'GET / HTTP/1.1\\r\\n' >&3 "
        "&& exec sleep 301) 2>/dev/null & done; wait")], detach=True)
    first = subprocess.Popen(
        [str(VENV_BIN / "ansible-playbook"), "deploy.yml", "-i", str(lab.inventory), "--limit", "app1,ops1",
         "-e", json.dumps({"release": target, "deploy_lock_ttl": ttl, "deploy_drain_seconds": 60})],
        cwd=REPO, env=env(FLEETDEPLOY_ACTOR="pytest", ANSIBLE_CACHE_PLUGIN_CONNECTION=str(lab.root / "facts"),
                          ANSIBLE_VAULT_PASSWORD_FILE=str(lab.vault_password_file)),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 600
        while (held := lab.lock()) is None:
            assert first.poll() is None and time.monotonic() < deadline, "the first deploy never took the lock"
            time.sleep(0.5)
        while time.time() - held["since"] <= ttl + 1:  # without renewals the lock is stale from here on
            time.sleep(0.5)
        second = lab.play("deploy.yml", "--limit", "app1,ops1", release=target, deploy_lock_ttl=ttl)
        still_running = first.poll() is None
        renewed = lab.lock()
    finally:
        lab.exec("app1", "pkill", "-f", "^sleep 301")  # the request in flight goes: the drain ends
        output = first.communicate(timeout=1200)[0]
    assert still_running, "the first deploy ended before the second asked for the lock: the test proves nothing"
    assert second.returncode != 0
    assert "held by pytest running 'deploy " in " ".join(second.output.split()), second.output[-3000:]
    assert set(second.recap()) == {"ops1"}
    assert renewed is not None and renewed["run_id"] == held["run_id"] and renewed["renewed"] > held["since"] + ttl
    assert first.returncode == 0, output[-6000:]
    assert lab.release_on("app1") == target
    assert lab.lock() is None
    # The refused deploy left no record; the first left its one.
    assert_one_audit_record(lab, before, "deploy", "ok", {host: "changed" if host == "app1" else "not reached"
                                                          for host in lab.app_hosts()})


def test_the_lock_playbook_shows_the_holder_and_releases_with_a_reason(lab: Lab) -> None:
    lock = {"name": "local", "run_id": "run-of-alice", "holder": "alice", "action": "deploy v9", "since": time.time(),
            "renewed": time.time(), "ttl": 3600, "expires": time.time() + 3600}
    lab.exec("ops1", "sh", "-c", f"echo '{json.dumps(lock)}' > /var/lib/fleetdeploy/deploy.lock")
    status = lab.play("playbooks/lock.yml").check()
    # The YAML callback folds long messages and, when it quotes one, doubles its single quotes.
    message = " ".join(status.output.replace("''", "'").split())
    assert "held by alice running 'deploy v9' (run run-of-alice) since" in message, status.output[-3000:]
    assert "kept until" in message
    refused = lab.play("playbooks/lock.yml", lock_action="release")
    assert refused.returncode != 0 and "lock_reason" in refused.output  # a release must say why
    before = lab.audit()
    lab.play("playbooks/lock.yml", lock_action="release", lock_reason="alice's deploy died").check()
    assert lab.lock() is None
    record = assert_one_audit_record(lab, before, "lock release", "released", {})
    assert record["reason"] == "alice's deploy died" and record["released"]["holder"] == "alice", record
    assert "Nobody holds the deploy lock of local" in " ".join(lab.play("playbooks/lock.yml").check().output.split())


def test_a_failed_site_run_leaves_one_audit_record(lab: Lab) -> None:
    """app2 cannot run modules (no Python where the inventory says): site.yml fails on it, carries on with
    ops1, and records the run as failed, naming app2."""
    host_vars = lab.inventory / "host_vars"
    host_vars.mkdir(exist_ok=True)
    (host_vars / "app2.yml").write_text("ansible_python_interpreter: /nonexistent/python3\n")
    before = lab.audit()
    try:
        run = lab.play("site.yml", "--limit", "app2,ops1")
    finally:
        shutil.rmtree(host_vars, ignore_errors=True)
    assert run.returncode != 0
    assert run.recap()["app2"]["failed"] + run.recap()["app2"]["unreachable"] == 1, run.output[-3000:]
    assert_one_audit_record(lab, before, "site", "failed", {"app2": "failed", "ops1": "ok"})


def test_with_deploy_require_promotion_only_the_promoted_digest_deploys(lab: Lab, tmp_path: Path) -> None:
    """Prod's rule (docs/deploy.md, "Promotion") on the lab. A second registry on ops1 (127.0.0.1:5055, the
    lab registry's certificate and accounts) plays prod's: promote.yml copies v2 into it from the lab's registry
    and records the digest. The deploy with deploy_require_promotion refuses v2 in its preflight while the
    record is missing, and while it names another digest, naming the image and both digests, and changes
    nothing; with the record promote.yml wrote (the same bytes, so the same digest) the preflight passes."""
    ops = lab.client.containers.get(f"{LAB}-lab-ops1")
    config = yaml.safe_load(lab.exec("ops1", "cat", "/etc/docker/registry/config.yml"))
    config["http"].pop("debug", None)
    config["http"]["addr"] = "127.0.0.1:5055"
    config["storage"]["filesystem"]["rootdirectory"] = "/var/lib/fleetdeploy-test-registry"
    encoded = base64.b64encode(json.dumps(config).encode()).decode()
    lab.exec("ops1", "sh", "-c", f"echo {encoded} | base64 -d > /etc/docker/registry/promote-test.yml && "
             "mkdir -p /etc/docker/certs.d/127.0.0.1:5055 && "
             "cp /etc/docker/certs.d/ops:5000/ca.crt /etc/docker/certs.d/127.0.0.1:5055/ca.crt")
    ops.exec_run(["sh", "-c", "echo $$ > /run/promote-test-registry.pid && "
                  "exec docker-registry serve /etc/docker/registry/promote-test.yml > /run/promote-test-registry.log 2>&1"],
                 detach=True)
    deadline = time.monotonic() + 30
    while lab.exec("ops1", "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert",
                   "/etc/docker/certs.d/127.0.0.1:5055/ca.crt", "https://127.0.0.1:5055/v2/") != "401":
        assert time.monotonic() < deadline, lab.exec("ops1", "cat", "/run/promote-test-registry.log")
        time.sleep(0.5)
    ca = tmp_path / "lab-registry-ca.crt"
    ca.write_text(lab.exec("ops1", "cat", "/etc/docker/certs.d/ops:5000/ca.crt"))
    record = "/var/lib/fleetdeploy/promotions/v2.json"
    hosts = lab.app_hosts()
    releases, containers = [lab.release_on(h) for h in hosts], service_containers(lab)

    def refused(expected: list[str]) -> None:
        run = lab.play("deploy.yml", release="v2", deploy_require_promotion=True)
        message = " ".join(run.output.split())
        assert run.returncode != 0 and set(run.recap()) == {"ops1"}, run.output[-3000:]
        assert all(text in message for text in expected), (expected, run.output[-3000:])
        assert "deploy_require_promotion" in message and "Nothing was changed" in message
        assert [lab.release_on(h) for h in hosts] == releases and service_containers(lab) == containers

    try:
        refused(["demo:v2 at sha256:", "which was never promoted"])

        promoted = lab.play("promote.yml", release="v2", fleetdeploy_registry="127.0.0.1:5055",
                            promote_source_registry="ops:5000", promote_source_username="fleetdeploy",
                            promote_source_password=(lab.root / "state" / "registry_password").read_text().strip(),
                            promote_source_ca=str(ca)).check()
        written = json.loads(lab.exec("ops1", "cat", record))
        digest = written["images"]["demo:v2"]["digest"]
        assert written["images"]["demo:v2"]["source"] == "ops:5000" and written["images"]["demo:v2"]["actor"] == "pytest"
        assert f"demo:v2 {digest} (copied)" in " ".join(promoted.output.split()), promoted.output[-3000:]
        audit = lab.audit()[0][-1]
        assert (audit["action"], audit["release"], audit["images"]) == ("promote", "v2", {"demo:v2": digest}), audit

        forged = {"release": "v2", "images": {"demo:v2": {**written["images"]["demo:v2"], "digest": "sha256:" + "0" * 64}}}
        encoded = base64.b64encode(json.dumps(forged).encode()).decode()
        lab.exec("ops1", "sh", "-c", f"echo {encoded} | base64 -d > {record}")
        refused([f"demo:v2 at {digest}, but it was promoted at sha256:{'0' * 64} from ops:5000"])

        encoded = base64.b64encode(json.dumps(written).encode()).decode()
        lab.exec("ops1", "sh", "-c", f"echo {encoded} | base64 -d > {record}")
        # Only ops1: the preflight passes and the run ends without an app host, whatever they run.
        passed = lab.play("deploy.yml", "--limit", "ops1", release="v2", deploy_require_promotion=True)
        assert passed.returncode == 0 and "never promoted" not in passed.output, passed.output[-3000:]
        assert "Take the deploy lock" in passed.output
    finally:
        lab.exec("ops1", "sh", "-c", "kill $(cat /run/promote-test-registry.pid); rm -rf /var/lib/fleetdeploy/promotions "
                 "/var/lib/fleetdeploy-test-registry /etc/docker/certs.d/127.0.0.1:5055 /etc/docker/registry/promote-test.yml "
                 "/etc/fleetdeploy/promote")


def test_a_tag_whose_image_is_unchanged_keeps_its_containers(lab: Lab) -> None:
    """Last, because it moves release records to a new tag that the earlier tests' records do not expect.
    The lock TTL test left app1 on another release than the other hosts; `<theirs>-same` is their image
    under another tag, as when a release rebuilt other services only. Its deploy swaps app1 alone: the
    others keep their containers, their records move to the new tag, and the audit names them unchanged."""
    hosts = lab.app_hosts()
    theirs = lab.release_on(hosts[1])
    assert lab.release_on(hosts[0]) != theirs and {lab.release_on(h) for h in hosts[1:]} == {theirs}
    same = f"{theirs}-same"
    lab.exec("ops1", "docker", "pull", f"ops:5000/demo:{theirs}")
    lab.exec("ops1", "docker", "tag", f"ops:5000/demo:{theirs}", f"ops:5000/demo:{same}")
    pushed = lab.exec("ops1", "docker", "push", f"ops:5000/demo:{same}")
    assert "digest: sha256:" in pushed, pushed
    containers = service_containers(lab)
    before = lab.audit()
    run, load = lab.under_load("deploy.yml", release=same)
    run.check()
    assert_no_failures(load)
    after = service_containers(lab)
    assert [host for host in hosts if after[host] != containers[host]] == [hosts[0]], (containers, after)
    assert [lab.release_on(h) for h in hosts] == [theirs] * len(hosts)  # the same bytes everywhere
    assert [lab.record(h)["current"] for h in hosts] == [same] * len(hosts)
    assert_one_audit_record(lab, before, "deploy", "ok", {host: "changed" if host == hosts[0] else "unchanged"
                                                          for host in hosts})


def test_the_delivery_figures_of_the_labs_history(lab: Lab) -> None:
    """fleetdeploy-dora over the audit log this module's deploys wrote: every deploy that reached the fleet
    carries the commit its image was built from (the lab builds from this checkout's HEAD), so no lead time
    is unknown; the failed deploys count, and the good deploys after them restore. The deploy itself wrote
    the same figures where node_exporter's textfile collector reads them."""
    log = lab.exec("ops1", "cat", "/var/log/fleetdeploy/audit.log")
    figures = subprocess.run([str(VENV_BIN / "python"), "-m", "fleetdeploy.dora", "--format", "json", "--days", "1"],
                             input=log, capture_output=True, text=True, timeout=60, check=False)
    assert figures.returncode == 0, figures.stderr
    demo = {row["service"]: row for row in json.loads(figures.stdout) if row["environment"] == "local"}["demo"]
    assert demo["reached_fleet"] >= 5 and demo["failed"] >= 2 and demo["unrestored"] == 0, demo
    assert demo["unknown_lead_times"] == 0, demo
    head_time = subprocess.run(["git", "-C", str(REPO), "show", "--no-patch", "--format=%ct", "HEAD"],
                               capture_output=True, text=True, check=True).stdout
    assert 0 < demo["lead_time_median_seconds"] <= time.time() - int(head_time) + 60, demo
    assert demo["time_to_restore_median_seconds"] > 0, demo
    # The last deploy wrote the same figures (30 days) for node_exporter's textfile collector on the ops host.
    textfile = lab.exec("ops1", "cat", "/var/lib/prometheus/node-exporter/fleetdeploy_dora.prom")
    expected = subprocess.run([str(VENV_BIN / "python"), "-m", "fleetdeploy.dora", "--format", "prometheus"],
                              input=log, capture_output=True, text=True, timeout=60, check=True).stdout
    assert 'fleetdeploy_dora_deployments{environment="local",service="demo",window_days="30"}' in expected
    assert textfile == expected, (textfile, expected)
