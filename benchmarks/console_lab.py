"""Measure the deploy console driving the dev lab's real deploy, and print the figures as JSON.

- deploy wall time on every app host of the lab: `ansible-playbook deploy.yml` against the console
  launching the same playbook (releases alternate, so every run swaps every host)
- the console's RSS at rest and its peak during those deploys (Ansible's own processes apart)
- event-to-client latency: Ansible's event timestamp -> the event read off the SSE stream

Needs the dev lab with releases v1 and v2 in its registry (`make lab`, then
`ansible-playbook playbooks/build.yml -e release=v2`); grow it first for a bigger fleet
(`ansible-playbook playbooks/lab.yml -e lab_app_hosts=6 && ansible-playbook site.yml`).
    .venv/bin/python benchmarks/console_lab.py [--runs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from console import BIN, Console, pct, rss_mb

REPO = Path(__file__).resolve().parents[1]
ENVIRONMENT = "local"


def write_config(root: Path) -> Path:
    config = {
        "project_dir": str(REPO),
        "data_dir": str(root / "data"),
        "ansible_config": str(REPO / "ansible.cfg"),
        "environments": {ENVIRONMENT: {"inventory": "inventories/local"}},
        "actions": {"deploy": {"playbook": "deploy.yml", "service": "web", "release": {"variable": "release"}}},
    }
    path = root / "console.yml"
    path.write_text(json.dumps(config))
    return path


def plain_deploy(release: str) -> float:
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "PATH": f"{BIN}:{os.environ['PATH']}"}
    start = time.monotonic()
    subprocess.run([str(BIN / "ansible-playbook"), "deploy.yml", "-e", f"release={release}"], cwd=REPO, env=env,
                   check=True, capture_output=True)
    return time.monotonic() - start


def app_hosts() -> int:
    inventory = yaml.safe_load((REPO / "inventories" / "local" / "hosts.yml").read_text())
    return len(inventory["all"]["children"]["app"]["hosts"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=2, help="deploys of each kind (median reported)")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    plain: list[float] = []
    through: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="console-lab-bench-") as tmp:
        console = Console(write_config(Path(tmp)))
        startup = console.start()
        assert console.proc is not None
        time.sleep(2)
        rest = rss_mb(console.proc.pid)
        # Each kind deploys v2 then back to v1, interleaved, so both see the same machine.
        for _ in range(args.runs):
            plain.append(plain_deploy("v2"))
            through.append(console.run_job("deploy", "v1", environment=ENVIRONMENT))
            through.append(console.run_job("deploy", "v2", environment=ENVIRONMENT))
            plain.append(plain_deploy("v1"))
        console.stop()

    latencies = [x for run in through for x in run["latencies"]]
    result = {
        "machine": {"cores": os.cpu_count(), "python": sys.version.split()[0],
                    "load_average_1m": {"before": round(load_before, 1), "after": round(os.getloadavg()[0], 1)}},
        "app_hosts": app_hosts(),
        "startup_seconds": round(startup, 3),
        "rss_mb": {"at_rest": round(rest, 1), "peak_during_deploys": round(max(r["peak_rss"] for r in through), 1)},
        "deploy_seconds": {
            "plain_ansible_playbook": {"median": round(statistics.median(plain), 1), "runs": [round(x, 1) for x in plain]},
            "through_console": {"median": round(statistics.median(r["wall"] for r in through), 1),
                                "runs": [round(r["wall"], 1) for r in through]},
            "events_per_deploy": through[0]["events"],
        },
        "event_to_client_latency_ms": {"p50": round(pct(latencies, 0.5) * 1000, 1),
                                       "p95": round(pct(latencies, 0.95) * 1000, 1),
                                       "max": round(max(latencies) * 1000, 1)},
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
