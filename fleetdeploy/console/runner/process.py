"""A job's processes: the marker each one carries, finding them by it, and stopping them."""

from __future__ import annotations

import hashlib
import os
import signal
import time

from fleetdeploy.console.config import shown_database

# Every process of a job carries this variable, so a sweep of /proc finds all of them, even ones
# that left the process group (ssh ControlPersist masters daemonise). Its value names the console's
# job store as well as the job: two consoles on one machine (staging's and prod's) both have a job 7.
JOB_MARKER = "FLEETDEPLOY_CONSOLE_JOB"


def job_marker(database: str, job_id: int) -> str:
    """The marker value of one job of the console whose job store is `database`.

    The marker is in every process of the job's environment: it is made from the URL without its password.
    """
    return f"{hashlib.sha256(shown_database(database).encode()).hexdigest()[:12]}-{job_id}"


def job_processes(job: str) -> list[int]:
    """PIDs of every process that carries this job marker (see job_marker) in /proc/<pid>/environ."""
    marker = f"{JOB_MARKER}={job}".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as fh:
                env = fh.read()
        except OSError:
            continue
        if marker + b"\0" in env or env.endswith(marker):
            found.append(int(entry.name))
    return found


def proc_stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat from the state on (the name before it may hold spaces): [0] state, [1] ppid, [2] pgrp,
    [19] start time in clock ticks after boot."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_identity(pid: int) -> str | None:
    """Who a PID is, not only its number: the boot and the start time (a reused PID has another start time)."""
    fields = proc_stat(pid)
    if fields is None or fields[0] == "Z":
        return None
    return f"{_BOOT_ID}:{fields[19]}"


def kill_process_group(pgid: int, identity: str | None) -> bool:
    """SIGKILL the process group `pgid` if its leader is still the process recorded as `identity`."""
    if not identity or process_identity(pgid) != identity:
        return False
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def kill_job_processes(job: str, timeout: float = 5.0) -> list[int]:
    """SIGKILL every process group of the job (a job_marker), then wait until none is left; returns the PIDs found."""
    pids = job_processes(job)
    for pid in pids:
        for kill in (lambda p: os.killpg(os.getpgid(p), signal.SIGKILL), lambda p: os.kill(p, signal.SIGKILL)):
            try:
                kill(pid)
            except (ProcessLookupError, PermissionError):
                pass
    deadline = time.monotonic() + timeout
    while pids and time.monotonic() < deadline:
        alive = [p for p in job_processes(job) if _alive(p)]
        if not alive:
            break
        time.sleep(0.05)
    return pids


def _alive(pid: int) -> bool:
    fields = proc_stat(pid)
    return fields is not None and fields[0] != "Z"


def _read_boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip()
    except OSError:
        return "unknown-boot"


_BOOT_ID = _read_boot_id()
