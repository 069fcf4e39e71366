"""Measure the deploy console and print the figures as JSON.

- start-up: `fleetdeploy-console serve` spawned -> /healthz answers (fresh SQLite, migrations included)
- memory: the console's RSS at rest, and its peak during a 6-host deploy (Ansible's own processes apart)
- overhead: wall time of the same 6-host deploy and of an event flood: plain ansible-playbook, ansible-runner
  alone (its own callback and output loop), and through the console
- ingestion: events per second the console stores and streams during the flood (bounded by how fast
  the playbook emits them), and the capacity of its ingest path alone: the flood's events, as runner
  handed them over, replayed through a job's queue, ingester and database writer as fast as they go
- ratios: each way of running over plain ansible-playbook (1.05 = 5 % slower), by wall time and by CPU time
  (the console's process and everything it started; CPU time suffers less from a busy machine)
- event-to-browser latency: Ansible's event timestamp -> the event read off the SSE stream by a client
- many jobs: --jobs small jobs (a 6-host rollback of debug tasks) one after the other through the console: its
  RSS after them, and each job's launch-to-first-event time (POST /api/jobs -> its first event off the stream)

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


def cpu_seconds(pid: int) -> float:
    """CPU time of a process and of its children it has waited for (utime, stime, cutime, cstime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def own_cpu(children_only: bool = False) -> float:
    """CPU time of this process's waited-for children (and of itself unless children_only)."""
    import resource

    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    me = resource.getrusage(resource.RUSAGE_SELF)
    return kids.ru_utime + kids.ru_stime + (0.0 if children_only else me.ru_utime + me.ru_stime)


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
            "rollback": {"playbook": "playbooks/rollback.yml", "role": "deployer"},
        },
    }
    path = root / "console.yml"
    path.write_text(json.dumps(config))
    return path


def plain_run(playbook: str, *extra: str) -> tuple[float, float]:
    """Wall and CPU seconds of the playbook run by ansible-playbook itself."""
    env = {**os.environ, "ANSIBLE_CONFIG": str(FIXTURES / "ansible.cfg"), "PATH": f"{BIN}:{os.environ['PATH']}"}
    start, cpu = time.monotonic(), own_cpu(children_only=True)
    subprocess.run([str(BIN / "ansible-playbook"), "-i", str(FIXTURES / "inventories" / "fleet"),
                    "--vault-password-file", str(FIXTURES / "vault-password"), str(FIXTURES / "playbooks" / playbook),
                    *extra], cwd=FIXTURES, env=env, check=True, capture_output=True,
                   # In a session of its own, as runner starts it (pexpect): the scheduler's autogroups then
                   # treat the two alike on a busy machine.
                   start_new_session=True)
    return time.monotonic() - start, own_cpu(children_only=True) - cpu


def runner_run(playbook: str, root: Path, keep: list[dict[str, Any]] | None = None,
               **extravars: Any) -> tuple[float, float]:
    """The same playbook through ansible-runner alone, no console: what runner itself costs.

    `keep` collects the events as runner hands them over (for ingest_capacity)."""
    import ansible_runner

    def handler(event: dict[str, Any]) -> bool:
        if keep is not None:
            keep.append(event)
        return False

    os.environ["ANSIBLE_CONFIG"] = str(FIXTURES / "ansible.cfg")
    os.environ["PATH"] = f"{BIN}:{os.environ['PATH']}"
    data = Path(tempfile.mkdtemp(dir=root))
    start, cpu = time.monotonic(), own_cpu()
    run = ansible_runner.run(private_data_dir=str(data), project_dir=str(FIXTURES),
                             playbook=str(FIXTURES / "playbooks" / playbook),
                             inventory=str(FIXTURES / "inventories" / "fleet"), extravars=extravars or None,
                             cmdline=f"--vault-password-file {FIXTURES / 'vault-password'}", quiet=True,
                             suppress_env_files=True, event_handler=handler)
    assert run.status == "successful", run.status
    return time.monotonic() - start, own_cpu() - cpu


def ingest_capacity(root: Path, raw_events: list[dict[str, Any]]) -> tuple[float, float]:
    """Events per second through the console's own path, with no playbook to wait for: runner's events put on a
    job's queue, redacted, folded into the grid, published, and stored by the writer (a fresh SQLite file).
    Per second of wall time and per second of this process's CPU time (which a busy machine skews less)."""
    from fleetdeploy.console.config import load
    from fleetdeploy.console.db import Job, make_engine, migrate, session_factory
    from fleetdeploy.console.runner.live import END, LiveJob
    from fleetdeploy.console.runner.manager import JobManager
    from fleetdeploy.console.runner.notify import Notifier

    data = Path(tempfile.mkdtemp(dir=root))
    url = f"sqlite:///{data / 'console.db'}"
    migrate(url)
    sessions = session_factory(make_engine(url))
    manager = JobManager(load(None, database=url, data_dir=data), sessions, Notifier(None))
    with sessions() as db:
        job = Job(environment="fleet", action="flood", playbook="flood.yml", extra_vars={}, launched_by="bench",
                  status="running", events_pruned=False)
        db.add(job)
        db.commit()
        live = LiveJob(id=job.id, environment="fleet", action="flood", release=None, launched_by="bench",
                       created_at=job.created_at)
    ingester = threading.Thread(target=manager._ingest, args=(live,), daemon=True)
    start, cpu = time.monotonic(), time.process_time()
    ingester.start()
    for event in raw_events:
        live.events.put(dict(event))
    live.events.put(END)
    ingester.join()
    manager.writer.drain()
    return len(raw_events) / (time.monotonic() - start), len(raw_events) / (time.process_time() - cpu)


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
        start, cpu = time.monotonic(), cpu_seconds(self.proc.pid)
        r = api.post("/api/jobs", json={"environment": environment, "action": action, "release": release,
                                        "extra_vars": extra})
        r.raise_for_status()
        job_id = r.json()["id"]
        latencies: list[float] = []
        arrivals: list[float] = []
        first_event = float("nan")
        with api.stream("GET", f"/api/jobs/{job_id}/events") as stream:
            for line in stream.iter_lines():
                if not line.startswith("data:"):
                    continue
                now = dt.datetime.now(dt.timezone.utc)
                msg = json.loads(line[5:])
                if msg["type"] == "event" and first_event != first_event:  # nan: none yet
                    first_event = time.monotonic() - start
                if msg["type"] == "event" and msg["event"].get("created"):
                    created = dt.datetime.fromisoformat(msg["event"]["created"])
                    latencies.append((now - created).total_seconds())
                    arrivals.append(time.monotonic())
                if msg["type"] == "end":
                    break
        wall, cpu = time.monotonic() - start, cpu_seconds(self.proc.pid) - cpu
        done.set()
        job = api.get(f"/api/jobs/{job_id}").json()
        assert job["status"] == "successful", job
        return {"wall": wall, "cpu": cpu, "latencies": latencies, "arrivals": arrivals, "peak_rss": max(peak),
                "first_event": first_event,
                "events": job["grid"].get("events", len(latencies))}


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="repetitions of each timed run (median reported)")
    parser.add_argument("--jobs", type=int, default=100, help="small jobs run one after the other for the RSS after them")
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

        # The three ways take turns, round after round, so that a change in the machine's load hits them alike.
        deploy_plain: list[tuple[float, float]] = []
        deploy_runner: list[tuple[float, float]] = []
        flood_plain: list[tuple[float, float]] = []
        flood_runner: list[tuple[float, float]] = []
        deploys: list[dict[str, Any]] = []
        floods: list[dict[str, Any]] = []
        flood_events: list[dict[str, Any]] = []
        for _ in range(args.runs):
            deploy_plain.append(plain_run("deploy.yml", "-e", "release=v1"))
            deploy_runner.append(runner_run("deploy.yml", Path(tmp), release="v1"))
            deploys.append(console.run_job("deploy", "v1"))
        for i in range(args.runs):
            flood_plain.append(plain_run("flood.yml"))
            flood_runner.append(runner_run("flood.yml", Path(tmp), flood_events if i == 0 else None))
            floods.append(console.run_job("flood"))
        small = [console.run_job("rollback") for _ in range(args.jobs)]
        time.sleep(1)
        after_jobs = rss_mb(console.proc.pid)
        console.stop()
        capacity: list[tuple[float, float]] = [ingest_capacity(Path(tmp), flood_events) for _ in range(args.runs)]

    def rate(run: dict[str, Any]) -> float:
        span = run["arrivals"][-1] - run["arrivals"][0]
        return len(run["arrivals"]) / span if span > 0 else float("nan")

    def med(runs: list[Any], what: int | str) -> float:
        return statistics.median(r[what] for r in runs)

    def ratios(plain: list[tuple[float, float]], runner: list[tuple[float, float]],
               through: list[dict[str, Any]]) -> dict[str, float]:
        return {"console_over_plain": round(med(through, "wall") / med(plain, 0), 3),
                "runner_alone_over_plain": round(med(runner, 0) / med(plain, 0), 3),
                "console_over_plain_cpu": round(med(through, "cpu") / med(plain, 1), 3),
                "runner_alone_over_plain_cpu": round(med(runner, 1) / med(plain, 1), 3)}

    def cpu(plain: list[tuple[float, float]], runner: list[tuple[float, float]],
            through: list[dict[str, Any]]) -> dict[str, float]:
        return {"plain_ansible_playbook": round(med(plain, 1), 2), "ansible_runner_alone": round(med(runner, 1), 2),
                "through_console": round(med(through, "cpu"), 2)}

    all_lat = [x for run in deploys + floods for x in run["latencies"]]
    deploy_lat = [x for run in deploys for x in run["latencies"]]
    result = {
        # Other work on the machine skews every figure: the load average says how much there was.
        "machine": {"cores": os.cpu_count(), "python": sys.version.split()[0],
                    "load_average_1m": {"before": round(load_before, 1), "after": round(os.getloadavg()[0], 1)}},
        "startup_seconds": {"median": round(statistics.median(starts), 3), "runs": [round(s, 3) for s in starts]},
        "rss_mb": {"at_rest": round(rest, 1),
                   "peak_during_6_host_deploy": round(max(r["peak_rss"] for r in deploys), 1),
                   "peak_during_event_flood": round(max(r["peak_rss"] for r in floods), 1),
                   f"at_rest_after_{args.jobs}_more_jobs": round(after_jobs, 1)},
        "launch_to_first_event_seconds": {
            "small_jobs": args.jobs,
            "median": round(statistics.median(r["first_event"] for r in small), 3) if small else None,
            "p95": round(pct([r["first_event"] for r in small], 0.95), 3) if small else None,
            "6_host_deploy_median": round(med(deploys, "first_event"), 3)},
        "deploy_6_hosts_seconds": {
            "plain_ansible_playbook": round(med(deploy_plain, 0), 2),
            "ansible_runner_alone": round(med(deploy_runner, 0), 2),
            "through_console": round(med(deploys, "wall"), 2),
            "events": deploys[0]["events"],
            "cpu_seconds": cpu(deploy_plain, deploy_runner, deploys),
            **ratios(deploy_plain, deploy_runner, deploys),
        },
        "event_flood": {
            "events": floods[0]["events"],
            "plain_ansible_playbook_seconds": round(med(flood_plain, 0), 2),
            "ansible_runner_alone_seconds": round(med(flood_runner, 0), 2),
            "through_console_seconds": round(med(floods, "wall"), 2),
            "cpu_seconds": cpu(flood_plain, flood_runner, floods),
            **ratios(flood_plain, flood_runner, floods),
            # As fast as the playbook emits them: a measure of the playbook as much as of the console.
            "ingested_events_per_second": round(statistics.median(rate(r) for r in floods), 1),
            # The console's own path alone (queue, redaction, grid, database writer), no playbook to wait for.
            "ingest_capacity_events_per_second": round(med(capacity, 0), 1),
            "ingest_capacity_events_per_cpu_second": round(med(capacity, 1), 1),
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
