"""Measure the deploy console and print the figures as JSON.

- start-up: `fleetdeploy-console serve` spawned -> /healthz answers (fresh SQLite, migrations included)
- memory: the console's RSS at rest, and its peak during a 6-host deploy (Ansible's own processes apart)
- overhead: wall time of the same 6-host deploy and of an event flood: plain ansible-playbook, ansible-runner
  alone (its own callback and output loop), and through the console
- ingestion: events per second the console stores and streams during the flood
- event-to-browser latency: Ansible's event timestamp -> the event read off the SSE stream by a client

Runs on the console's fixture playbooks (local hosts), so it needs no lab:
    .venv/bin/python benchmarks/console.py [--runs 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from console_server import Server, start_server  # noqa: E402

FIXTURES = REPO / "tests" / "console" / "fixtures"
BIN = REPO / ".venv" / "bin"
PASSWORD = "bench-password-1234"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def write_config(root: Path) -> Path:
    config = {
        "project_dir": str(FIXTURES),
        "data_dir": str(root / "data"),
        "ansible_config": str(FIXTURES / "ansible.cfg"),
        "vault": {"password_file": str(FIXTURES / "vault-password")},
        "environments": {"fleet": {"inventory": "inventories/fleet"}},
        "actions": {
            "deploy": {"playbook": "playbooks/deploy.yml", "service": "web", "release": {"variable": "release"}},
            "flood": {"playbook": "playbooks/flood.yml", "role": "deployer"},
        },
    }
    path = root / "console.yml"
    path.write_text(json.dumps(config))
    return path


def plain_run(playbook: str, *extra: str) -> float:
    env = {**os.environ, "ANSIBLE_CONFIG": str(FIXTURES / "ansible.cfg"), "PATH": f"{BIN}:{os.environ['PATH']}"}
    start = time.monotonic()
    subprocess.run([str(BIN / "ansible-playbook"), "-i", str(FIXTURES / "inventories" / "fleet"),
                    "--vault-password-file", str(FIXTURES / "vault-password"), str(FIXTURES / "playbooks" / playbook),
                    *extra], cwd=FIXTURES, env=env, check=True, capture_output=True)
    return time.monotonic() - start


def runner_run(playbook: str, root: Path, **extravars: Any) -> float:
    """The same playbook through ansible-runner alone, no console: what runner itself costs."""
    import ansible_runner

    os.environ["ANSIBLE_CONFIG"] = str(FIXTURES / "ansible.cfg")
    os.environ["PATH"] = f"{BIN}:{os.environ['PATH']}"
    data = Path(tempfile.mkdtemp(dir=root))
    start = time.monotonic()
    run = ansible_runner.run(private_data_dir=str(data), project_dir=str(FIXTURES),
                             playbook=str(FIXTURES / "playbooks" / playbook),
                             inventory=str(FIXTURES / "inventories" / "fleet"), extravars=extravars or None,
                             cmdline=f"--vault-password-file {FIXTURES / 'vault-password'}", quiet=True,
                             suppress_env_files=True, event_handler=lambda _event: False)
    assert run.status == "successful", run.status
    return time.monotonic() - start


class Console:
    def __init__(self, config: Path) -> None:
        self.config = config
        subprocess.run([str(BIN / "fleetdeploy-console"), "create-user", "bench", "--role", "deployer",
                        "--password-stdin", "--config", str(self.config)], input=PASSWORD + "\n", text=True,
                       check=True, capture_output=True)
        token = subprocess.run([str(BIN / "fleetdeploy-console"), "create-token", "bench", "--role", "deployer",
                                "--config", str(self.config)], text=True, check=True, capture_output=True)
        self.token = token.stdout.strip()
        self.server: Server | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> float:
        """Seconds from spawning `serve` to its first answer on /healthz."""
        self.server = start_server(self.config.parent, self.config, dict(os.environ), "--no-access-log",
                                   "--log-level", "warning", poll=0.02)
        self.proc, self.url = self.server.proc, self.server.url
        return self.server.started_s

    def stop(self) -> None:
        if self.server:
            self.server.stop()

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=120)

    def run_job(self, action: str, release: str | None = None, environment: str = "fleet",
                **extra: Any) -> dict[str, Any]:
        """Launch, follow the SSE stream to the end; return timings, latencies and the console's peak RSS."""
        assert self.proc is not None
        api = self.api()
        peak = [rss_mb(self.proc.pid)]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak.append(rss_mb(self.proc.pid))  # type: ignore[union-attr]
                time.sleep(0.05)

        threading.Thread(target=sample, daemon=True).start()
        start = time.monotonic()
        r = api.post("/api/jobs", json={"environment": environment, "action": action, "release": release,
                                        "extra_vars": extra})
        r.raise_for_status()
        job_id = r.json()["id"]
        latencies: list[float] = []
        arrivals: list[float] = []
        with api.stream("GET", f"/api/jobs/{job_id}/events") as stream:
            for line in stream.iter_lines():
                if not line.startswith("data:"):
                    continue
                now = dt.datetime.now(dt.timezone.utc)
                msg = json.loads(line[5:])
                if msg["type"] == "event" and msg["event"].get("created"):
                    created = dt.datetime.fromisoformat(msg["event"]["created"])
                    latencies.append((now - created).total_seconds())
                    arrivals.append(time.monotonic())
                if msg["type"] == "end":
                    break
        wall = time.monotonic() - start
        done.set()
        job = api.get(f"/api/jobs/{job_id}").json()
        assert job["status"] == "successful", job
        return {"wall": wall, "latencies": latencies, "arrivals": arrivals, "peak_rss": max(peak),
                "events": job["grid"].get("events", len(latencies))}


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="repetitions of each timed run (median reported)")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="console-bench-") as tmp:
        console = Console(write_config(Path(tmp)))
        starts = []
        for _ in range(args.runs):
            starts.append(console.start())
            console.stop()
        console.start()
        assert console.proc is not None
        with console.api() as api:
            api.get("/api/jobs").raise_for_status()
        time.sleep(1)
        rest = rss_mb(console.proc.pid)

        deploy_plain = [plain_run("deploy.yml", "-e", "release=v1") for _ in range(args.runs)]
        deploy_runner = [runner_run("deploy.yml", Path(tmp), release="v1") for _ in range(args.runs)]
        deploys = [console.run_job("deploy", "v1") for _ in range(args.runs)]
        flood_plain = [plain_run("flood.yml") for _ in range(args.runs)]
        flood_runner = [runner_run("flood.yml", Path(tmp)) for _ in range(args.runs)]
        floods = [console.run_job("flood") for _ in range(args.runs)]
        console.stop()

    def rate(run: dict[str, Any]) -> float:
        span = run["arrivals"][-1] - run["arrivals"][0]
        return len(run["arrivals"]) / span if span > 0 else float("nan")

    all_lat = [x for run in deploys + floods for x in run["latencies"]]
    deploy_lat = [x for run in deploys for x in run["latencies"]]
    result = {
        # Other work on the machine skews every figure: the load average says how much there was.
        "machine": {"cores": os.cpu_count(), "python": sys.version.split()[0],
                    "load_average_1m": {"before": round(load_before, 1), "after": round(os.getloadavg()[0], 1)}},
        "startup_seconds": {"median": round(statistics.median(starts), 3), "runs": [round(s, 3) for s in starts]},
        "rss_mb": {"at_rest": round(rest, 1),
                   "peak_during_6_host_deploy": round(max(r["peak_rss"] for r in deploys), 1),
                   "peak_during_event_flood": round(max(r["peak_rss"] for r in floods), 1)},
        "deploy_6_hosts_seconds": {
            "plain_ansible_playbook": round(statistics.median(deploy_plain), 2),
            "ansible_runner_alone": round(statistics.median(deploy_runner), 2),
            "through_console": round(statistics.median(r["wall"] for r in deploys), 2),
            "events": deploys[0]["events"],
        },
        "event_flood": {
            "events": floods[0]["events"],
            "plain_ansible_playbook_seconds": round(statistics.median(flood_plain), 2),
            "ansible_runner_alone_seconds": round(statistics.median(flood_runner), 2),
            "through_console_seconds": round(statistics.median(r["wall"] for r in floods), 2),
            "ingested_events_per_second": round(statistics.median(rate(r) for r in floods), 1),
        },
        "event_to_client_latency_ms": {
            "deploy": {"p50": round(pct(deploy_lat, 0.5) * 1000, 1), "p95": round(pct(deploy_lat, 0.95) * 1000, 1),
                       "max": round(max(deploy_lat) * 1000, 1)},
            "all": {"p50": round(pct(all_lat, 0.5) * 1000, 1), "p95": round(pct(all_lat, 0.95) * 1000, 1),
                    "max": round(max(all_lat) * 1000, 1)},
        },
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
