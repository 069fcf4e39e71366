"""Time deploys on a lab of its own under steady load; print the figures as JSON.

For each fleet size (default 1, 2, 3 and 6 app hosts, grown in that order) and each batch size
(default 1 host at a time, and 50%), deploy the other of two releases while the load generator
runs, and report: requests, failures, p50/p99 before and during the deploy, the deploy's wall time
and its time per host; then a no-op re-deploy's time. All traffic goes to 127.0.0.1.

The lab is named fdbench (its own ports, inventory and fact cache), so yours is never touched; it is
removed at the end unless --keep.
Usage: .venv/bin/python benchmarks/deploy.py [--hosts 1,2,3,6] [--serial 1,50%] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from fleetdeploy.loadgen import LoadGenerator  # noqa: E402
from helpers import Run, playbook  # noqa: E402

LAB = "fdbench"
HTTP_PORT = 38080
RATE = 60
RELEASES = ("v1", "v2")


class BenchLab:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.inventory = root / "inventory"
        self.inventory.mkdir()
        os.symlink(REPO / "inventories" / "local" / "group_vars", self.inventory / "group_vars")

    def lab_vars(self, app_hosts: int) -> dict[str, object]:
        return {"lab_name": LAB, "lab_app_hosts": app_hosts, "lab_ssh_port_base": 3400,
                "lab_http_port": HTTP_PORT, "lab_https_port": 38443, "lab_prometheus_port": 39090,
                "lab_alertmanager_port": 39093, "lab_registry_port": 35443,
                "lab_state_dir": str(self.root / "state"), "lab_inventory_file": str(self.inventory / "hosts.yml")}

    def play(self, path: str, *args: str, **extra_vars: object) -> Run:
        return playbook(path, "-i", str(self.inventory), *args, extra_vars=extra_vars or None,
                        FLEETDEPLOY_ACTOR="benchmark", ANSIBLE_CACHE_PLUGIN_CONNECTION=str(self.root / "facts"))

    def grow(self, app_hosts: int) -> float:
        started = time.monotonic()
        playbook("playbooks/lab.yml", extra_vars=self.lab_vars(app_hosts)).check()
        self.play("site.yml").check()
        return round(time.monotonic() - started, 1)

    def destroy(self) -> None:
        playbook("playbooks/lab_destroy.yml", extra_vars=self.lab_vars(1))


def deploy_under_load(lab: BenchLab, release: str, serial: str) -> dict[str, object]:
    with LoadGenerator("127.0.0.1", HTTP_PORT, rate=RATE) as before:
        time.sleep(10)
    with LoadGenerator("127.0.0.1", HTTP_PORT, rate=RATE) as during:
        started = time.monotonic()
        lab.play("deploy.yml", release=release, deploy_serial=serial).check()
        took = time.monotonic() - started
    b, d = before.result, during.result
    return {"deploy_s": round(took, 1), "steady": {k: b.summary()[k] for k in ("requests", "failures", "p50_ms", "p99_ms")},
            "during": {k: d.summary()[k] for k in ("requests", "failures", "p50_ms", "p99_ms")},
            "p99_ratio": round(d.percentile(99) / b.percentile(99), 2) if b.latencies and d.latencies else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", default="1,2,3,6")
    parser.add_argument("--serial", default="1,50%")
    parser.add_argument("--keep", action="store_true", help="leave the fdbench lab running")
    args = parser.parse_args()
    sizes = sorted(int(n) for n in args.hosts.split(","))
    serials = args.serial.split(",")

    lab = BenchLab(Path(tempfile.mkdtemp(prefix="fdbench-")))
    figures: dict[str, object] = {"rate_per_s": RATE, "fleets": []}
    try:
        lab.destroy()
        current = None
        for size in sizes:
            fleet: dict[str, object] = {"app_hosts": size, "provision_s": lab.grow(size), "deploys": []}
            if current is None:
                for release in RELEASES:
                    lab.play("playbooks/build.yml", release=release).check()
                lab.play("deploy.yml", release=RELEASES[0]).check()
                current = RELEASES[0]
            for serial in serials:
                target = RELEASES[1] if current == RELEASES[0] else RELEASES[0]
                entry = {"serial": serial, **deploy_under_load(lab, target, serial)}
                entry["per_host_s"] = round(entry["deploy_s"] / size, 1)  # type: ignore[operator]
                current = target
                fleet["deploys"].append(entry)  # type: ignore[union-attr]
            started = time.monotonic()
            lab.play("deploy.yml", release=current).check()
            fleet["noop_redeploy_s"] = round(time.monotonic() - started, 1)
            figures["fleets"].append(fleet)  # type: ignore[union-attr]
            print(json.dumps(fleet), file=sys.stderr, flush=True)
    finally:
        if not args.keep:
            lab.destroy()
            shutil.rmtree(lab.root, ignore_errors=True)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
