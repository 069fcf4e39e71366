"""Zero-downtime deploys on a lab of its own, with a load generator running for the whole deploy.

The lab (lab_name fdci, LB on 127.0.0.1:28080) has no monitor host; it starts with three app hosts and
grows to four under load. The one-host case is app1 serving alone (the others out of HAProxy) and
swapped without any help from the load balancer. All traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import docker
import pytest
import yaml

from console_server import CONSOLE, Server, chromium_page, sign_in, start_server
from fleetdeploy.loadgen import LoadGenerator, Result
from helpers import REPO, SLOT_SUFFIX, VENV_BIN, Run, env, playbook, slot_port
from helpers import run as run_command

pytestmark = [pytest.mark.lab, pytest.mark.slow]

LAB = f"fdci{SLOT_SUFFIX}"
HTTP_PORT = slot_port(28080)
REGISTRY_PORT = slot_port(25443)
RATE = 60  # requests per second, over keep-alive connections, a quarter of them POSTs


class Lab:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.inventory = root / "inventory"
        self.client = docker.from_env()

    def lab_vars(self, app_hosts: int) -> dict[str, object]:
        return {
            "lab_name": LAB,
            "lab_app_hosts": app_hosts,
            # Deploys need no monitor host; the monitoring has scenarios of its own (molecule/monitoring).
            "lab_monitor_host": False,
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
                        FLEETDEPLOY_ACTOR="pytest", ANSIBLE_CACHE_PLUGIN_CONNECTION=str(self.root / "facts"))

    def grow(self, app_hosts: int) -> None:
        playbook("playbooks/lab.yml", extra_vars=self.lab_vars(app_hosts)).check()
        self.play("site.yml").check()

    def exec(self, host: str, *cmd: str) -> str:
        container = self.client.containers.get(f"{LAB}-lab-{host}")
        result = container.exec_run(list(cmd))
        return result.output.decode()

    def hosts(self) -> list[str]:
        found = self.client.containers.list(filters={"label": f"org.fleetdeploy.lab={LAB}"})
        return sorted(c.labels["org.fleetdeploy.host"] for c in found)

    def app_hosts(self) -> list[str]:
        return [host for host in self.hosts() if host.startswith("app")]

    def release_on(self, host: str) -> str:
        answer = self.exec(host, "curl", "-sS", "--max-time", "5", "http://127.0.0.1:80/version")
        return json.loads(answer)["release"]

    def record(self, host: str, service: str = "demo") -> dict:
        return json.loads(self.exec(host, "cat", f"/var/lib/fleetdeploy/releases/{service}.json"))

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
    # The test lab uses the local environment's group_vars, exactly as `make lab` does.
    os.symlink(REPO / "inventories" / "local" / "group_vars", lab.inventory / "group_vars")
    playbook("playbooks/lab_destroy.yml", extra_vars=lab.lab_vars(1)).check()
    lab.grow(3)
    for release in ("v1", "v2"):
        lab.play("playbooks/build.yml", release=release).check()
    lab.play("playbooks/build.yml", release="bad", demo_unhealthy="true").check()
    lab.play("playbooks/build.yml", release="bad-on-app2", demo_unhealthy="app2").check()
    lab.play("deploy.yml", release="v1").check()
    yield lab
    playbook("playbooks/lab_destroy.yml", extra_vars=lab.lab_vars(4))
    shutil.rmtree(root, ignore_errors=True)


def assert_no_failures(result: Result) -> None:
    assert result.requests >= 50, result.summary()
    assert result.rate >= 50 * 0.9, result.summary()
    assert result.failures == [], result.summary()


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
    app1 runs v2 after the one-host test, app2 and app3 v1; the deploy puts v1 everywhere, under load."""
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
            page.click("#launch-button")
            expect(page).to_have_url(re.compile(r"/jobs/\d+$"))
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
    finally:
        console.stop()
    assert_no_failures(load.result)
    assert [lab.release_on(h) for h in lab.app_hosts()] == ["v1", "v1", "v1"]
    assert lab.record("app1")["history"][0]["user"] == "console:deployer"


def test_three_hosts_go_from_v1_to_v2_with_zero_failed_requests(lab: Lab) -> None:
    lab.play("deploy.yml", release="v1").check()
    run, load = lab.under_load("deploy.yml", release="v2")
    run.check()
    assert_no_failures(load)
    assert [lab.release_on(h) for h in lab.app_hosts()] == ["v2", "v2", "v2"]
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
                          ANSIBLE_MODULE_UTILS=str(role / "module_utils"))
    assert refused.returncode != 0
    assert "nginx -t refused the new" in refused.output and "no_such_directive" in refused.output, refused.output
    assert lab.exec("app1", "cat", upstream) == before
    assert lab.release_on("app1") == "v2"


def test_an_unhealthy_release_fails_clearly_and_the_fleet_keeps_serving(lab: Lab) -> None:
    run, load = lab.under_load("deploy.yml", release="bad", deploy_health_timeout=10)
    assert run.returncode != 0
    assert_no_failures(load)
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


def test_a_mistyped_release_fails_fast_and_changes_nothing(lab: Lab) -> None:
    run = lab.play("deploy.yml", release="v2-typo")
    assert run.returncode != 0
    assert "has no demo:v2-typo" in " ".join(run.output.split())
    assert set(run.recap()) == {"ops1"}, "no app host may be touched"
    # Fast by construction rather than by a clock: the registry's answer is final, so nothing waits and asks again.
    assert "FAILED - RETRYING" not in run.output
    assert [lab.release_on(h) for h in lab.app_hosts()] == ["v2", "v2", "v2"]


def test_a_bad_container_setting_fails_the_preflight_and_changes_nothing(lab: Lab) -> None:
    services = yaml.safe_load((REPO / "inventories" / "local" / "group_vars" / "all" / "services.yml").read_text())
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
    run, load = lab.under_load("rollback.yml")
    run.check()
    assert_no_failures(load)
    assert [lab.release_on(h) for h in lab.app_hosts()] == ["v1", "v1", "v1"]
    containers = lab.exec("app1", "docker", "ps", "--all", "--filter", "label=org.fleetdeploy.service=demo",
                          "--format", "{{.Names}} {{.Image}} {{.State}}").splitlines()
    assert containers == [f"{free_slot} {serving[1].rsplit(':', 1)[0]}:v1 running"], containers
    audit = lab.exec("ops1", "tail", "-n", "1", "/var/log/fleetdeploy/audit.log")
    entry = json.loads(audit)
    assert entry["action"] == "rollback" and entry["result"] == "ok" and entry["user"] == "pytest"


def test_growing_from_three_to_four_hosts_under_load(lab: Lab) -> None:
    with LoadGenerator("127.0.0.1", HTTP_PORT, rate=RATE) as load:
        lab.grow(4)
    assert_no_failures(load.result)
    # The fleet's current release, which the rollback before this test made v1 again.
    assert lab.release_on("app4") == "v1"
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
            deploy_started = time.time()  # the set-up above registered the targets too
            lab.play("deploy.yml", release=target, deploy_lb_provider="alb", deploy_lb_region="eu-west-1").check()
        finally:
            for key in aws.env():
                os.environ.pop(key, None)
            shutil.rmtree(lab.inventory / "host_vars", ignore_errors=True)
        calls = aws.recorder.actions("DeregisterTargets", "RegisterTargets")
    assert [lab.release_on(h) for h in hosts] == [target] * len(hosts)
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
