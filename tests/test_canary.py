"""Canary deploys (deploy_strategy: canary) on a lab of their own, under load, judged by a real Prometheus.

The lab (lab_name fdcan, LB on 127.0.0.1:27080) has two app hosts running the demo service, HAProxy, the
ops host and a monitor host (monitor1) whose Prometheus scrapes mtail's request histograms on the app hosts (every
5 s here). app1 is the canary, app2 the baseline. Faulty releases come from the test-only build
(tests/fixtures/unhealthy_demo): `fail5` answers every twentieth GET / with 500 (5 % of that one
endpoint), `slow300` takes 300 ms longer on every request; both pass their health check. All traffic goes
to 127.0.0.1.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from datetime import datetime
from pathlib import Path

import docker
import pytest

from fleetdeploy.loadgen import LoadGenerator, Result
from helpers import SLOT_SUFFIX, Run, link_demo_group_vars, playbook, slot_port

pytestmark = [pytest.mark.lab, pytest.mark.slow]

LAB = f"fdcan{SLOT_SUFFIX}"
HTTP_PORT = slot_port(27080)
RATE = 60  # requests per second over 4 keep-alive connections; a quarter of them POST /echo
FAULTY_BUILD = "tests/fixtures/unhealthy_demo/build.yml"
# Short steps for a test: 20 s each, Prometheus scraping every 5 s.
CANARY = {"deploy_strategy": "canary", "deploy_canary_steps": [10, 50, 100], "deploy_canary_interval": 20,
          "monitoring_scrape_interval": "5s"}


class CanaryLab:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.inventory = root / "inventory"
        self.client = docker.from_env()

    def lab_vars(self) -> dict[str, object]:
        return {
            "lab_name": LAB,
            "lab_app_hosts": 2,
            "lab_monitor_host": True,
            "lab_data_host": False,
            "lab_ssh_port_base": slot_port(2600),
            "lab_http_port": HTTP_PORT,
            "lab_https_port": slot_port(27443),
            "lab_registry_port": slot_port(27543),
            "lab_prometheus_port": slot_port(27090),
            "lab_alertmanager_port": slot_port(27093),
            "lab_state_dir": str(self.root / "state"),
            "lab_inventory_file": str(self.inventory / "hosts.yml"),
        }

    def play(self, path: str, *args: str, **extra_vars: object) -> Run:
        return playbook(path, "-i", str(self.inventory), *args, extra_vars=extra_vars or None,
                        FLEETDEPLOY_ACTOR="pytest", ANSIBLE_CACHE_PLUGIN_CONNECTION=str(self.root / "facts"))

    def exec(self, host: str, *cmd: str) -> str:
        return self.client.containers.get(f"{LAB}-lab-{host}").exec_run(list(cmd)).output.decode()

    def release_on(self, host: str) -> str:
        return str(json.loads(self.exec(host, "curl", "-sS", "--max-time", "5", "http://127.0.0.1/version"))["release"])

    def weights(self) -> dict[str, str]:
        """Each app host's weight in HAProxy as `get weight` says it: "<current> (initial <configured>)"."""
        return {host: self.exec("lb1", "sh", "-c", f"echo 'get weight app/{host}' | socat stdio /run/haproxy/admin.sock").strip()
                for host in ("app1", "app2")}

    def last_audit_record(self) -> dict:
        lines = self.exec("ops1", "cat", "/var/log/fleetdeploy/audit.log").splitlines()
        return json.loads([line for line in lines if line.startswith("{")][-1])

    def canary_deploy(self, release: str, **extra_vars: object) -> tuple[Run, Result, float]:
        """A canary deploy under load: the run, the traffic's result, and the run's seconds."""
        with LoadGenerator("127.0.0.1", HTTP_PORT, rate=RATE, connections=4, keep_samples=True) as load:
            time.sleep(2)
            started = time.monotonic()
            run = self.play("deploy.yml", release=release, **{**CANARY, **extra_vars})
            seconds = time.monotonic() - started
            time.sleep(2)
        return run, load.result, seconds


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("canarylab")
    lab = CanaryLab(root)
    lab.inventory.mkdir()
    link_demo_group_vars(lab.inventory)
    playbook("playbooks/lab_destroy.yml", extra_vars=lab.lab_vars()).check()
    playbook("playbooks/lab.yml", extra_vars=lab.lab_vars()).check()
    lab.play("site.yml", monitoring_scrape_interval="5s").check()
    for release in ("v1", "v2"):
        lab.play("playbooks/build.yml", release=release, build_allow_dirty=True).check()
    lab.play(FAULTY_BUILD, release="fail5", from_release="v2", fail_percent=5).check()
    lab.play(FAULTY_BUILD, release="slow300", from_release="v2", delay_ms=300).check()
    lab.play("deploy.yml", release="v1").check()
    yield lab
    playbook("playbooks/lab_destroy.yml", extra_vars=lab.lab_vars())
    shutil.rmtree(root, ignore_errors=True)


def epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def assert_back_on(lab: CanaryLab, release: str) -> None:
    assert {host: lab.release_on(host) for host in ("app1", "app2")} == {"app1": release, "app2": release}
    assert lab.weights() == {"app1": "1 (initial 1)", "app2": "1 (initial 1)"}, lab.weights()


def test_a_good_release_goes_through_every_step_to_the_whole_fleet_with_zero_failed_requests(lab: CanaryLab) -> None:
    run, load, seconds = lab.canary_deploy("v2")
    run.check()
    assert load.requests >= 50 * seconds * 0.9 and load.failures == [], load.summary()
    assert_back_on(lab, "v2")
    record = lab.last_audit_record()
    assert (record["action"], record["release"], record["result"]) == ("deploy", "v2", "ok"), record
    canary = record["canary"]
    assert canary["verdict"] == "pass" and [step["percent"] for step in canary["steps"]] == [10, 50, 100], canary
    # 10 % with one host on each side: the canary's weight is 256 * 0.1 / 0.9, rounded.
    assert canary["steps"][0]["weights"] == {"app1": 28, "app2": 256}, canary["steps"][0]
    assert canary["steps"][2]["weights"] == {"app1": 256, "app2": 0}, canary["steps"][2]
    # v2 answered nothing before the first step: the canary came back from its swap at weight 0.
    assert min(sample.at for sample in load.samples if sample.release == "v2") > epoch(canary["steps"][0]["started"]) - 0.5
    first = canary["steps"][0]["services"]["demo"]
    assert first["requests"]["canary"] >= 10 and first["checks"]["success ratio"]["canary"] == 1.0, first
    print(f"canary promotion: {seconds:.0f} s for the deploy, steps "
          + ", ".join(f"{s['percent']} % {s['started']}..{s['ended']}" for s in canary["steps"]))


def aborted(lab: CanaryLab, release: str, **extra_vars: object) -> tuple[Run, Result, dict]:
    """A canary deploy of a bad release: refused, the fleet back on v2 with its weights, one failed record."""
    run, load, seconds = lab.canary_deploy(release, **extra_vars)
    assert run.returncode != 0, run.output[-3000:]
    assert f"Deploy of {release} stopped at the canary (app1)" in run.output, run.output[-3000:]
    assert_back_on(lab, "v2")
    record = lab.last_audit_record()
    assert (record["release"], record["result"], record["hosts"]) == (
        release, "failed", {"app1": "rolled back", "app2": "not reached"}), record
    canary = record["canary"]
    assert len(canary["steps"]) == 1 and canary["traffic_back"] >= canary["steps"][0]["ended"], canary
    # The canary took no request before its first step, and none once the traffic was back (half a second
    # for a request already on its way): the weights did that, not the rollback's drain after them.
    step_started, traffic_back = epoch(canary["steps"][0]["started"]), epoch(canary["traffic_back"])
    served = [sample.at for sample in load.samples if sample.release == release]
    assert served, "the canary answered no request"
    assert min(served) > step_started - 0.5 and max(served) < traffic_back + 0.5, (
        step_started, traffic_back, min(served), max(served))
    print(f"canary abort of {release}: {canary['steps'][0]['started']} step start, traffic back "
          f"{canary['traffic_back']}; deploy {seconds:.0f} s")
    return run, load, canary


def test_five_percent_of_one_endpoint_failing_is_caught_at_the_first_step(lab: CanaryLab) -> None:
    run, load, canary = aborted(lab, "fail5")
    assert canary["verdict"] == "fail", canary
    assert re.search(r"demo on app1: success ratio 0\.9[0-9]+ is under 0\.9900", run.output), run.output[-3000:]
    # Only the canary failed requests, only while it had the first step's share: at most a twentieth of its
    # share of the GETs of the whole run, with one for rounding.
    step = canary["steps"][0]
    share = step["weights"]["app1"] / (step["weights"]["app1"] + step["weights"]["app2"])
    gets = load.requests * 3 / 4
    assert all(failure.startswith("GET /: HTTP 500") for failure in load.failures), load.summary()
    assert 1 <= len(load.failures) <= math.ceil(gets * share / 20) + 1, (len(load.failures), share, load.summary())


def test_a_release_300_ms_slower_is_caught_by_the_latency_check(lab: CanaryLab) -> None:
    run, load, canary = aborted(lab, "slow300")
    assert canary["verdict"] == "fail" and load.failures == [], (canary, load.summary())
    assert re.search(r"demo on app1: p99 latency [0-9]+ ms is over 1\.5 times the baseline's", run.output), \
        run.output[-3000:]


def test_with_prometheus_away_the_canary_is_not_promoted_and_goes_back(lab: CanaryLab) -> None:
    lab.exec("monitor1", "systemctl", "stop", "prometheus")
    try:
        run, load, canary = aborted(lab, "v1")
    finally:
        lab.exec("monitor1", "systemctl", "start", "prometheus")
    assert canary["verdict"] == "inconclusive" and load.failures == [], (canary, load.summary())
    assert "the analysis could not judge it, so it was not promoted" in run.output, run.output[-3000:]
    assert re.search(r"Prometheus at http://[0-9.]+:9090 did not answer", run.output), run.output[-3000:]
