"""What one Ansible module run costs a host, with and without the host image's compiled-module cache.

Starts a throw-away host from each host image (fdbench-modules-<distribution>), runs the same
modules over the docker connection a number of times, and reads the CPU the host's container used
from its cgroup, with the cache (roles/lab_image/files/fleetdeploy_zipimport_cache.py) and with its
.pth file moved aside, alternating for a number of rounds; it prints the medians. Each measurement
runs a module as N tasks of one playbook, after a one-task warm-up that fills the cache. Prints JSON.
Usage: .venv/bin/python benchmarks/modules.py [--runs 5] [--rounds 3] [--images debian12,debian13]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from helpers import VENV_BIN, run, start_host, wait_until_booted  # noqa: E402

MODULES = {"ping": {}, "command": {"cmd": "true"}, "file": {"path": "/tmp/bench", "state": "touch"},
           "apt": {"name": "ca-certificates"}}

def cpu_ns(container_id: str) -> int:
    for path in (f"/sys/fs/cgroup/cpuacct/docker/{container_id}/cpuacct.usage",
                 f"/sys/fs/cgroup/system.slice/docker-{container_id}.scope/cpu.stat"):
        try:
            text = Path(path).read_text()
        except OSError:
            continue
        if path.endswith("cpu.stat"):
            return int(dict(line.split() for line in text.splitlines())["usage_usec"]) * 1000
        return int(text)
    raise SystemExit(f"cannot read the CPU use of container {container_id} from its cgroup")


def module_costs(name: str, runs: int) -> dict[str, float]:
    """Milliseconds of host CPU per run of each module."""
    figures: dict[str, float] = {}
    container = subprocess.run(["docker", "inspect", "-f", "{{.Id}}", name], capture_output=True, text=True,
                               check=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="fdbench-modules-") as folder:
        for module, args in MODULES.items():
            command = [str(VENV_BIN / "ansible-playbook"), "-i", f"{name},", "-c", "community.docker.docker",
                       "-e", "ansible_pipelining=true"]
            for count in (1, runs):  # the warm-up, then the measured runs
                book = Path(folder) / f"{module}-{count}.yml"
                book.write_text(json.dumps([{"hosts": "all", "gather_facts": False, "tasks": [
                    {"name": f"{module} {n}", f"ansible.builtin.{module}": args} for n in range(count)]}]))
                before = cpu_ns(container)
                run([*command, str(book)]).check()
            figures[f"{module}_ms"] = round((cpu_ns(container) - before) / runs / 1e6, 1)
    return figures


def set_cache(name: str, on: bool) -> None:
    """Put the cache's .pth file in place, or move it aside (the cache folder itself stays)."""
    script = ('cd "$(python3 -c "import site; print(site.getsitepackages()[0])")" && '
              + ("mv -f fleetdeploy_zipimport_cache.pth.off fleetdeploy_zipimport_cache.pth 2>/dev/null || true" if on
                 else "mv -f fleetdeploy_zipimport_cache.pth fleetdeploy_zipimport_cache.pth.off 2>/dev/null || true"))
    subprocess.run(["docker", "exec", name, "sh", "-c", script], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="module runs per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per module, with and without, alternating")
    parser.add_argument("--images", default="debian12,debian13")
    args = parser.parse_args()
    results: dict[str, object] = {"runs_per_measurement": args.runs, "rounds": args.rounds, "hosts": {}}
    for distribution in args.images.split(","):
        name = f"fdbench-modules-{distribution}"
        start_host(name, f"fleetdeploy/host:{distribution}")
        try:
            wait_until_booted(name)  # systemd's own start-up must not count against the first module
            samples: dict[str, dict[str, list[float]]] = {"with_cache": {}, "without_cache": {}}
            for _ in range(args.rounds):
                for mode in samples:
                    set_cache(name, mode == "with_cache")
                    for module, ms in module_costs(name, args.runs).items():
                        samples[mode].setdefault(module, []).append(ms)
            results["hosts"][distribution] = {  # type: ignore[index]
                mode: {module: round(statistics.median(values), 1) for module, values in figures.items()}
                for mode, figures in samples.items()}
        finally:
            subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
