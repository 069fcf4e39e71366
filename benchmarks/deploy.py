"""Time deploys on a lab of its own under steady load; print the figures as JSON.

For each fleet size (default 1, 2, 3 and 6 app hosts, grown in that order) and each batch size
(default 1 host at a time, and 50%), deploy the other of two releases while the load generator
runs, and report: requests, failures, p50/p99 before and during the deploy, the deploy's wall time
and its time per host; then a no-op re-deploy's time and p99 ratio, also under load. All traffic goes to 127.0.0.1.

Each of those runs once per --controller value (default both). In the lab the controller shares two
cores with every host, the load balancer and the load generator; a real controller (a CI runner, the
ops host) does not run on the app hosts. `shared` runs ansible-playbook like any process. `idle` runs
it, with every process it starts, in a cgroup whose cpu.idle is set (Linux 5.15+, root): it gets a
CPU only when no task of the lab wants one, as if it ran on a machine of its own, while the hosts'
own work (the modules, docker, nginx's reload) keeps its priority, as on real hosts. (`nice` cannot
do this: Linux schedules each session as a group, and the load generator shares the benchmark's.)
Both rows are printed, with the share of the time some task on this machine waited for a CPU (Linux's
pressure stall information) before and during the deploy, and the CPU seconds the controller used.

Latency is compared over a 30 s steady window before each deploy and the deploy itself. Every
answered request is kept, so each row also counts the requests that took over twice the steady p99,
and of those that a GET answered (it names its host), the share answered by a host while the deploy
was not touching it (outside the span from that host's first task to its last): delay there comes
from the shared machine, not from the host's swap.

Each deploy also reports where a host's time goes (the median over its hosts), from the start and end
of every task on every host (benchmarks/callback_plugins/step_times.py): pulling the images, leaving
the load balancer, starting the new container, waiting for its health check, switching nginx,
draining and stopping the old container, coming back; and the swap's time beyond the service's own
start (from starting the new container to removing the old, less the start and the health wait),
whose target is 10 s at most.

On every fleet of two hosts or more, it then breaks one app host under the same load, three times:
its nginx stopped (connections refused), the whole host frozen (`docker pause`: connections open,
nothing answers), and the host unreachable (its answers to the load balancer dropped, as after a
crash or a network partition: no connection opens). It reports how long HAProxy took to mark the
host down (from HAProxy's own log) and, once the host is back, up again; the requests that failed
or were slow meanwhile; and those answered only after the host came back, stuck on it. (The load
generator sends each connection's next request when the last is answered, so a stuck request also
holds one of its four connections.) The host is restored whatever happens.

The lab is named fdbench (its own ports, inventory and fact cache), so yours is never touched; it is
removed at the end unless --keep.
Usage: .venv/bin/python benchmarks/deploy.py [--hosts 1,2,3,6] [--serial 1,50%] [--controller shared,idle] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from fleetdeploy.loadgen import LoadGenerator, Result, Sample  # noqa: E402
from helpers import Run, link_demo_group_vars, playbook  # noqa: E402

LAB = "fdbench"
HTTP_PORT = 38080
RATE = 60
STEADY_S = 30
RELEASES = ("v1", "v2")
STEP_TIMES = REPO / "benchmarks" / "callback_plugins"
FAILOVER_HOST = "app1"
# How an app host fails, and how it comes back: commands run here, {host} the host's container and
# {lb} the load balancer's address on the lab's network.
FAILURES = {"nginx_stopped": (["docker", "exec", "{host}", "systemctl", "stop", "nginx"],
                              ["docker", "exec", "{host}", "systemctl", "start", "nginx"]),
            "host_frozen": (["docker", "pause", "{host}"], ["docker", "unpause", "{host}"]),
            # As after a crash or a network partition: the host's answers to the load balancer vanish
            # (a blackhole route to it), so no connection opens and nothing already open answers.
            "host_unreachable": (["docker", "exec", "{host}", "ip", "route", "add", "blackhole", "{lb}"],
                                 ["docker", "exec", "{host}", "ip", "route", "del", "blackhole", "{lb}"])}

# A host's steps during a deploy: the task file they come from, and within the swap the task's name.
STEPS_BY_FILE = {"app_release/tasks/plan.yml": "plan", "app_release/tasks/pull.yml": "pull",
                 "lb_member/tasks/drain.yml": "lb_out", "lb_member/tasks/haproxy_drain.yml": "lb_out",
                 "lb_member/tasks/restore.yml": "lb_in", "lb_member/tasks/haproxy_restore.yml": "lb_in"}
SWAP_STEPS = {"Start the new release": "start", "Wait until the new container answers": "health",
              "Point nginx at the new": "switch", "Let the old container finish": "drain",
              "Stop the old container": "stop"}


def step_of(line: dict) -> str:
    path = line["path"]
    for file, step in STEPS_BY_FILE.items():
        if f"/roles/{file}:" in path:
            return step
    if "/roles/app_release/tasks/swap_one.yml:" in path:
        name = line["task"].split(" : ", 1)[-1]  # without the "app_release : " Ansible puts before it
        return next((step for prefix, step in SWAP_STEPS.items() if name.startswith(prefix)), "record")
    return "other"


def host_steps(lines: list[dict]) -> dict[str, dict[str, float]]:
    """Per app host: seconds in each step, the whole swap, and the swap beyond the service's own start."""
    hosts: dict[str, dict[str, float]] = {}
    for host in sorted({line["host"] for line in lines}):
        mine = [(step_of(line), line) for line in lines if line["host"] == host]
        steps: dict[str, float] = {}
        for step, line in mine:
            steps[step] = steps.get(step, 0.0) + line["end"] - line["start"]
        swap = [line for step, line in mine if step in {"start", "health", "switch", "drain", "stop"}]
        if not swap:
            continue  # a host the deploy left alone
        steps["swap"] = max(line["end"] for line in swap) - min(line["start"] for line in swap)
        steps["swap_beyond_service_start"] = steps["swap"] - steps.get("start", 0.0) - steps.get("health", 0.0)
        hosts[host] = steps
    return hosts


def median_steps(hosts: dict[str, dict[str, float]]) -> dict[str, float]:
    names = sorted({name for steps in hosts.values() for name in steps})
    return {name: round(statistics.median(steps.get(name, 0.0) for steps in hosts.values()), 2) for name in names}


class BenchLab:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.inventory = root / "inventory"
        self.inventory.mkdir()
        link_demo_group_vars(self.inventory)

    def lab_vars(self, app_hosts: int) -> dict[str, object]:
        return {"lab_name": LAB, "lab_app_hosts": app_hosts, "lab_data_host": False, "lab_ssh_port_base": 3400,
                "lab_http_port": HTTP_PORT, "lab_https_port": 38443, "lab_prometheus_port": 39090,
                "lab_alertmanager_port": 39093, "lab_registry_port": 35443,
                "lab_state_dir": str(self.root / "state"), "lab_inventory_file": str(self.inventory / "hosts.yml")}

    def play(self, path: str, *args: str, env: dict[str, str] | None = None, cgroup: Path | None = None,
             **extra_vars: object) -> Run:
        # Each controller placement keeps its own SSH master connections, which persist between runs.
        control = self.root / ("cp-idle" if cgroup else "cp")
        return playbook(path, "-i", str(self.inventory), *args, extra_vars=extra_vars or None, cgroup=cgroup,
                        FLEETDEPLOY_ACTOR="benchmark", ANSIBLE_CACHE_PLUGIN_CONNECTION=str(self.root / "facts"),
                        ANSIBLE_SSH_CONTROL_PATH_DIR=str(control), **(env or {}))

    def timed_deploy(self, release: str, serial: str, cgroup: Path | None) -> tuple[float, float, list[dict]]:
        """A deploy with the step_times callback on; its wall time, the controller's CPU seconds and the
        app hosts' task times."""
        log = self.root / f"steps-{time.time_ns()}.jsonl"
        started, cpu = time.monotonic(), children_cpu_s()
        self.play("deploy.yml", release=release, deploy_serial=serial, cgroup=cgroup,
                  env={"ANSIBLE_CALLBACK_PLUGINS": str(STEP_TIMES), "FLEETDEPLOY_STEP_LOG": str(log),
                       "ANSIBLE_CALLBACKS_ENABLED": "ansible.posix.profile_tasks,step_times"}).check()
        took, cpu = time.monotonic() - started, children_cpu_s() - cpu
        lines = [json.loads(text) for text in log.read_text().splitlines()]
        return took, cpu, [line for line in lines if line["host"].startswith("app")]

    def grow(self, app_hosts: int) -> float:
        started = time.monotonic()
        playbook("playbooks/lab.yml", extra_vars=self.lab_vars(app_hosts)).check()
        self.play("site.yml").check()
        return round(time.monotonic() - started, 1)

    @staticmethod
    def container(host: str) -> str:
        return f"{LAB}-lab-{host}"

    def address(self, host: str) -> str:
        each_network = "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"  # the lab's hosts have one
        return subprocess.run(["docker", "inspect", "--format", each_network, self.container(host)],
                              capture_output=True, text=True, check=True).stdout.strip()

    def haproxy_marked(self, server: str, state: str, since: float, timeout: float = 120) -> float:
        """When HAProxy on lb1 logged that `server` went DOWN or came UP, the first time at or after `since`."""
        pattern = re.compile(rf"^(\d+\.\d+) .*Server \S+/{re.escape(server)} is {state}\b")
        deadline = time.monotonic() + timeout
        while True:
            log = subprocess.run(["docker", "exec", self.container("lb1"), "journalctl", "--unit", "haproxy",
                                  "--output", "short-unix", "--since", f"@{int(since)}", "--no-pager", "--quiet"],
                                 capture_output=True, text=True, check=True).stdout
            marked = [float(m[1]) for m in map(pattern.match, log.splitlines()) if m and float(m[1]) >= since]
            if marked:
                return marked[0]
            if time.monotonic() > deadline:
                raise SystemExit(f"HAProxy never logged {server} {state} within {timeout:.0f} s")
            time.sleep(0.2)

    def destroy(self) -> None:
        playbook("playbooks/lab_destroy.yml", extra_vars=self.lab_vars(1))


def children_cpu_s() -> float:
    """CPU seconds used by this process's finished children and everything they waited for: the
    controller (ansible-playbook, its forks, its SSH clients)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def idle_cgroup() -> Path:
    """A cgroup whose tasks get a CPU only when no other task on the machine wants it (cpu.idle)."""
    unified = Path("/sys/fs/cgroup/cgroup.controllers").exists()
    base = Path("/sys/fs/cgroup") if unified else Path("/sys/fs/cgroup/cpu")
    group = base / f"{LAB}-controller"
    try:
        if unified and "cpu" not in (base / "cgroup.subtree_control").read_text().split():
            (base / "cgroup.subtree_control").write_text("+cpu")
        group.mkdir(exist_ok=True)
        (group / "cpu.idle").write_text("1")
    except OSError as error:
        raise SystemExit(f"--controller idle needs root and a kernel with cgroup cpu.idle (Linux 5.15+): {error}") from None
    return group


def slow_requests(samples: list[Sample], threshold_s: float, lines: list[dict]) -> dict[str, object]:
    """The requests over the threshold; of those a host answered, the share it answered while the deploy
    was not touching it (outside the span from its first task to its last)."""
    spans: dict[str, tuple[float, float]] = {}
    for line in lines:
        first, last = spans.get(line["host"], (line["start"], line["end"]))
        spans[line["host"]] = (min(first, line["start"]), max(last, line["end"]))
    slow = [sample for sample in samples if sample.latency > threshold_s]
    named = [sample for sample in slow if sample.host]
    untouched = (float("inf"), float("-inf"))  # a host the deploy never touched: no time is inside
    away = [sample for sample in named
            if not (span := spans.get(sample.host, untouched))[0] <= sample.at <= span[1]]
    return {"threshold_ms": round(threshold_s * 1000, 2), "count": len(slow),
            "share_pct": round(100 * len(slow) / len(samples), 1) if samples else None,
            "answered_by_a_host_outside_its_deploy_pct": round(100 * len(away) / len(named), 1) if named else None}


def headline(result: Result, *more: str) -> dict[str, object]:
    """What a row reports of the load generator's summary: requests, failures, p50 and p99 (from each send, and p99
    from the schedule: fleetdeploy/loadgen.py), and `more`."""
    summary = result.summary()
    return {key: summary[key] for key in ("requests", "failures", "p50_ms", "p99_ms", "p99_from_schedule_ms", *more)}


def slow_threshold_s(steady: Result) -> float:
    """A request is slow when it takes over twice the steady window's p99."""
    return 2 * steady.percentile(99)


def cpu_waiting_s() -> float:
    """Seconds in which some runnable task on this machine waited for a CPU, since boot (Linux PSI)."""
    try:
        some = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except OSError:
        return float("nan")
    return int(some.rsplit("total=", 1)[1]) / 1e6


def deploy_under_load(lab: BenchLab, release: str, serial: str, cgroup: Path | None) -> dict[str, object]:
    waited = cpu_waiting_s()
    with LoadGenerator("127.0.0.1", HTTP_PORT, rate=RATE) as before:
        time.sleep(STEADY_S)
    now = cpu_waiting_s()
    waited_before, waited = now - waited, now
    with LoadGenerator("127.0.0.1", HTTP_PORT, rate=RATE, keep_samples=True) as during:
        took, controller_cpu, lines = lab.timed_deploy(release, serial, cgroup)
    waited_during = cpu_waiting_s() - waited
    b, d = before.result, during.result
    hosts = host_steps(lines)
    return {"deploy_s": round(took, 1), "steady": headline(b), "during": headline(d),
            "p99_ratio": round(d.percentile(99) / b.percentile(99), 2) if b.latencies and d.latencies else None,
            "slow_requests": slow_requests(d.samples, slow_threshold_s(b), lines),
            # The share of the time some task waited for one of this machine's CPUs: what the lab's
            # shared cores do to the traffic, apart from what the deploy does to it.
            "cpu_waiting_pct": {"steady": round(100 * waited_before / b.seconds, 1),
                                "during": round(100 * waited_during / d.seconds, 1)},
            "controller_cpu_s": round(controller_cpu, 1),
            "host_steps_median_s": median_steps(hosts),
            "swap_beyond_service_start_max_s":
                round(max(s["swap_beyond_service_start"] for s in hosts.values()), 2) if hosts else None}


def failover_under_load(lab: BenchLab, failure: str) -> dict[str, object]:
    """Break FAILOVER_HOST under load, keep it broken until HAProxy marks it down and 5 s more, then
    restore it and keep the load on until HAProxy marks it up and 5 s more."""
    host, lb = lab.container(FAILOVER_HOST), lab.address("lb1")
    breaking, restoring = ([arg.replace("{host}", host).replace("{lb}", lb) for arg in command]
                           for command in FAILURES[failure])
    with LoadGenerator("127.0.0.1", HTTP_PORT, rate=RATE) as before:
        time.sleep(STEADY_S)
    with LoadGenerator("127.0.0.1", HTTP_PORT, rate=RATE, keep_samples=True) as during:
        time.sleep(2)
        broken = time.time()
        subprocess.run(breaking, check=True, capture_output=True)
        try:
            down = lab.haproxy_marked(FAILOVER_HOST, "DOWN", broken)
            time.sleep(max(0.0, down + 5 - time.time()))
        finally:
            restored = time.time()
            subprocess.run(restoring, check=True, capture_output=True)
        up = lab.haproxy_marked(FAILOVER_HOST, "UP", restored)
        time.sleep(max(0.0, up + 5 - time.time()))
    b, d = before.result, during.result
    threshold = slow_threshold_s(b)
    return {"failure": failure, "host": FAILOVER_HOST,
            "marked_down_after_s": round(down - broken, 2), "marked_up_after_s": round(up - restored, 2),
            "steady": headline(b), "during": headline(d, "first_failures"),
            "max_ms": round(max(d.latencies) * 1000, 1) if d.latencies else None,
            # Sent between the break and HAProxy marking the host down: the requests it could still pick the host for.
            "slow_while_undetected": sum(1 for s in d.samples if broken <= s.at <= down and s.latency > threshold),
            "slow_threshold_ms": round(threshold * 1000, 2),
            # Slow, sent before the restore and answered after it: stuck on the broken host until it came back.
            "stuck_until_restored": sum(1 for s in d.samples
                                        if s.at < restored <= s.at + s.latency and s.latency > threshold)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", default="1,2,3,6")
    parser.add_argument("--serial", default="1,50%")
    parser.add_argument("--controller", default="shared,idle",
                        help="where ansible-playbook runs, each a row of its own: shared (like any process) or idle "
                             "(a cgroup with cpu.idle: only on CPU time the lab leaves, as on a machine of its own)")
    parser.add_argument("--keep", action="store_true", help="leave the fdbench lab running")
    args = parser.parse_args()
    sizes = sorted(int(n) for n in args.hosts.split(","))
    serials = args.serial.split(",")
    placements = args.controller.split(",")
    if not placements or set(placements) - {"shared", "idle"}:
        parser.error(f"--controller takes shared, idle or both, not {args.controller!r}")
    cgroups = {placement: idle_cgroup() if placement == "idle" else None for placement in placements}

    lab = BenchLab(Path(tempfile.mkdtemp(prefix="fdbench-")))
    figures: dict[str, object] = {"rate_per_s": RATE, "fleets": []}
    try:
        lab.destroy()
        current = None
        for size in sizes:
            fleet: dict[str, object] = {"app_hosts": size, "provision_s": lab.grow(size), "deploys": []}
            if current is None:
                for release in RELEASES:
                    lab.play("playbooks/build.yml", release=release, build_allow_dirty=True).check()
                lab.play("deploy.yml", release=RELEASES[0]).check()
                current = RELEASES[0]
            fleet["noop_redeploys"] = []
            for placement, cgroup in cgroups.items():
                for serial in serials:
                    target = RELEASES[1] if current == RELEASES[0] else RELEASES[0]
                    entry = {"serial": serial, "controller": placement, **deploy_under_load(lab, target, serial, cgroup)}
                    entry["per_host_s"] = round(entry["deploy_s"] / size, 1)  # type: ignore[operator]
                    current = target
                    fleet["deploys"].append(entry)  # type: ignore[union-attr]
                # The same release again changes nothing: its latency figures show what the run's own CPU
                # use (ansible, the health checks) does to the traffic on this shared machine, without a swap.
                noop = deploy_under_load(lab, current, "1", cgroup)
                fleet["noop_redeploys"].append(  # type: ignore[union-attr]
                    {"controller": placement, "deploy_s": noop["deploy_s"], "p99_ratio": noop["p99_ratio"],
                     "slow_requests": noop["slow_requests"], "controller_cpu_s": noop["controller_cpu_s"]})
            if size > 1:
                fleet["failover"] = [failover_under_load(lab, failure) for failure in FAILURES]
            figures["fleets"].append(fleet)  # type: ignore[union-attr]
            print(json.dumps(fleet), file=sys.stderr, flush=True)
    finally:
        if not args.keep:
            lab.destroy()
            shutil.rmtree(lab.root, ignore_errors=True)
        for cgroup in filter(None, cgroups.values()):
            try:
                cgroup.rmdir()
            except OSError:
                pass  # SSH master connections still in it: they leave within a minute, and a next run reuses it
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
