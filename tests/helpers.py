"""Helpers the tests share: run playbooks and molecule the way a user would, and read their results."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = REPO / ".venv" / "bin"

# Two checkouts testing on one machine at once each set their own FD_TEST_SLOT (0-9): the test labs'
# names, ports and the Molecule hosts' names move with it, so neither touches the other's containers.
SLOT = int(os.environ.get("FD_TEST_SLOT", "0"))
SLOT_SUFFIX = str(SLOT) if SLOT else ""


def slot_port(port: int) -> int:
    """A test lab's port, moved by 20 per slot (a lab publishes at most a few ports from each base)."""
    return port + 20 * SLOT


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now, for a server a test starts."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])

# What `docker run` needs to boot one of the host images as the shared Molecule platform does
# (.config/molecule/config.yml), with fewer capabilities: for throw-away hosts of tests and benchmarks.
HOST_RUN_ARGS = [
    "--cgroupns", "host", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw", "--tmpfs", "/run", "--tmpfs", "/run/lock",
    "--tmpfs", "/tmp", "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
    "--cap-drop", "ALL", "--cap-add", "CHOWN", "--cap-add", "DAC_OVERRIDE", "--cap-add", "FOWNER",
    "--cap-add", "SETUID", "--cap-add", "SETGID", "--cap-add", "SYS_ADMIN", "--cap-add", "KILL",
    "--cap-add", "NET_ADMIN", "--cap-add", "SYS_CHROOT", "--cap-add", "SETPCAP", "--cap-add", "AUDIT_WRITE",
    "-e", "container=docker",
]


def start_host(name: str, image: str) -> None:
    """A throw-away host booting systemd from one of the host images (a leftover of that name goes first)."""
    subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)
    subprocess.run(["docker", "run", "-d", "--name", name, *HOST_RUN_ARGS, image, "/lib/systemd/systemd"],
                   capture_output=True, check=True)


def wait_until_booted(name: str, timeout: float = 120) -> None:
    """Wait until systemd in container `name` reports the boot finished (running or degraded)."""
    deadline = time.monotonic() + timeout
    # systemctl answers only once systemd's own socket is up, a moment after the start.
    while (state := subprocess.run(["docker", "exec", name, "systemctl", "is-system-running", "--wait"],
                                   capture_output=True, text=True, check=False)).stdout.strip() not in (
            "running", "degraded"):
        assert time.monotonic() < deadline, f"{name} did not boot: {state.stdout}{state.stderr}"
        time.sleep(0.5)

_RECAP = re.compile(
    r"^(?P<host>\S+)\s+:\s+ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)"
    r"\s+failed=(?P<failed>\d+)",
    re.MULTILINE,
)


@dataclass
class Run:
    """A finished command with its combined output."""

    args: list[str]
    returncode: int
    output: str

    def recap(self) -> dict[str, dict[str, int]]:
        """The PLAY RECAP counters per host."""
        return {
            m["host"]: {k: int(m[k]) for k in ("ok", "changed", "unreachable", "failed")}
            for m in _RECAP.finditer(self.output)
        }

    def changed(self) -> int:
        return sum(counts["changed"] for counts in self.recap().values())

    def check(self) -> "Run":
        assert self.returncode == 0, f"{' '.join(self.args)} failed ({self.returncode}):\n{self.output[-6000:]}"
        return self


def env(**extra: str) -> dict[str, str]:
    """The environment a user gets from the Makefile: the venv first on PATH, the repo's ansible.cfg."""
    result = dict(os.environ)
    result["PATH"] = f"{VENV_BIN}:{result.get('PATH', '')}"
    result["ANSIBLE_CONFIG"] = str(REPO / "ansible.cfg")
    result["ANSIBLE_NOCOLOR"] = "1"
    result.pop("ANSIBLE_FORCE_COLOR", None)
    result.update(extra)
    return result


def run(args: list[str], cwd: Path = REPO, timeout: int = 1800, **extra_env: str) -> Run:
    proc = subprocess.run(
        args,
        cwd=cwd,
        env=env(**extra_env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Run(args=args, returncode=proc.returncode, output=proc.stdout)


def playbook(path: str, *args: str, extra_vars: dict[str, object] | None = None, cgroup: Path | None = None,
             **extra_env: str) -> Run:
    """ansible-playbook with the Makefile's environment; with `cgroup` (a cgroup's folder) it runs in that
    cgroup, with every process it starts."""
    cmd = [str(VENV_BIN / "ansible-playbook"), path, *args]
    if cgroup is not None:
        cmd = ["sh", "-c", f'echo $$ > {cgroup}/cgroup.procs && exec "$@"', "sh", *cmd]
    if extra_vars:
        cmd += ["-e", json.dumps(extra_vars)]
    return run(cmd, **extra_env)


DEMO_SERVICES = REPO / "tests" / "fixtures" / "demo_lab" / "services.yml"


def link_group_vars(inventory: Path, services: Path | None = None) -> None:
    """The local environment's group_vars under `inventory`, file by file (a developer's own vault.yml left
    out); `services` in place of all/services.yml when given."""
    local = REPO / "inventories" / "local" / "group_vars"
    for source in sorted(local.rglob("*")):
        if source.is_file() and source.name != "vault.yml":
            target = inventory / "group_vars" / source.relative_to(local)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(services if services and source.relative_to(local) == Path("all/services.yml") else source)


def link_demo_group_vars(inventory: Path) -> None:
    """The local group_vars with the demo service alone in place of the application's services: a lab for
    the deploy engine (tests/test_deploy.py, benchmarks/deploy.py) that needs no data host."""
    link_group_vars(inventory, DEMO_SERVICES)


def host_clock(exec_on: Callable[..., str], host: str) -> str:
    """The host's clock now as epoch seconds with nanoseconds, the form `docker events --since` takes: whole
    seconds would also take in the events of the second before, such as the previous deploy's last start.
    `exec_on(host, *command)` runs a command on a lab host and returns its output."""
    return exec_on(host, "date", "+%s.%N").strip()


ContainerEvent = tuple[str, str, str]  # (action, container name, exit code or "")
_EVENTS_FORMAT = ('{{.TimeNano}} {{.Action}} {{index .Actor.Attributes "org.fleetdeploy.service"}} '
                  '{{.Actor.Attributes.name}} {{index .Actor.Attributes "exitCode"}}')


@contextlib.contextmanager
def container_events(exec_on: Callable[..., str], hosts: list[str]) -> Iterator[dict[tuple[str, str], list[ContainerEvent]]]:
    """The start, kill and die events of the deployed containers on each host while the block runs, in
    order, as {(host, service): [(action, container name, exit code), ...]} (filled when the block ends).

    Each host runs a live `docker events` for the whole block. Asking afterwards (`--since`) reads only the
    engine's memory of its last 256 events (each HEALTHCHECK run is three), and what an engine restarted
    meanwhile remembers: CI once saw an old worker's start with no die before it, which neither way can
    explain afterwards. A stream that ends early (the engine stopped) fails naming it, with what it printed."""
    log = f"/tmp/fd-events-{os.getpid()}-{time.monotonic_ns()}.log"
    streams: dict[str, str] = {}
    untils: dict[str, int] = {}
    ended: dict[str, tuple[str, list[str]]] = {}
    found: dict[tuple[str, str], list[ContainerEvent]] = {}
    try:
        for host in hosts:
            streams[host] = exec_on(host, "sh", "-c", 'docker events --since "$1" --filter type=container '
                                    '--filter label=org.fleetdeploy.service --format "$2" > "$3" 2>&1 & echo $!',
                                    "sh", host_clock(exec_on, host), _EVENTS_FORMAT, log).strip()
        yield found
        untils = {host: int(host_clock(exec_on, host).replace(".", "")) for host in streams}
        time.sleep(1)  # what happened until now reaches the streams
    finally:
        # Every stream stopped and every log read and removed, whatever failed.
        for host, pid in streams.items():
            alive = exec_on(host, "sh", "-c", 'kill "$1" && echo stopped || echo gone', "sh", pid).strip()
            ended[host] = (alive, exec_on(host, "sh", "-c", 'cat "$1"; rm -f "$1"', "sh", log).splitlines())
    for host, until in untils.items():
        alive, lines = ended[host]
        assert alive == "stopped", f"{host}: the docker events stream ended before the block did: {lines[-5:]}"
        for line in lines:
            fields = (line.split() + ["", ""])[:5]
            assert fields[0].isdigit(), f"{host}: docker events printed {line!r}"
            if int(fields[0]) <= until and fields[1] in ("start", "kill", "die"):
                found.setdefault((host, fields[2]), []).append((fields[1], fields[3], fields[4]))


TOOLS_CACHE = REPO / ".cache" / "prometheus-tools"
# Debian 13 has promtool in its own package; Debian 12 ships it in prometheus. mtail runs the exporters
# role's request program in tests/test_request_metrics.py.
TOOL_PACKAGES = {"promtool": ["promtool", "prometheus"], "amtool": ["prometheus-alertmanager"], "mtail": ["mtail"]}


def debian_tool(tool: str) -> Path:
    """A Prometheus-side tool (promtool, prometheus, amtool, mtail) from PATH, else from its Debian package
    unpacked into .cache/prometheus-tools: the tests that run the real binaries share one copy."""
    found = shutil.which(tool)
    if found:
        return Path(found)
    unpacked = TOOLS_CACHE / "root" / "usr" / "bin" / tool
    if unpacked.exists():
        return unpacked
    debs = TOOLS_CACHE / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    for package in TOOL_PACKAGES[tool]:
        got = subprocess.run(["apt-get", "download", package], cwd=debs, capture_output=True, text=True, check=False)
        if got.returncode != 0:
            continue
        for deb in sorted(debs.glob(f"{package}_*.deb")):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(TOOLS_CACHE / "root")], check=True)
        if unpacked.exists():
            return unpacked
    pytest.fail(f"{tool} is not installed and apt-get could not download {' or '.join(TOOL_PACKAGES[tool])}: "
                f"install Debian's {TOOL_PACKAGES[tool][-1]} package on this machine")


# A play that runs image_build's preflight alone on the controller, as playbooks/build.yml runs the role.
IMAGE_BUILD_PREFLIGHT_PLAY = """\
- name: Check the services before a build, as playbooks/build.yml does
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Run the image_build role's preflight
      ansible.builtin.include_role:
        name: image_build
        tasks_from: preflight.yml
"""
