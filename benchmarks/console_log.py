"""Measure reading a job's log back (fleetdeploy.console.domain.joblog) and print the figures as JSON.

A synthetic job of `--hosts` hosts and `--tasks` tasks (a start and a result event per host and task,
as ansible-runner sends them): the time to build one host's log, to search the whole output, and to
render it as text. The database read in front of these (one indexed query) is not included.
    .venv/bin/python benchmarks/console_log.py [--hosts 50] [--tasks 100]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

from fleetdeploy.console.domain import joblog


def synthetic_job(hosts: int, tasks: int) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    counter = 0
    for t in range(tasks):
        for h in range(hosts):
            for kind in ("runner_on_start", "runner_on_ok"):
                counter += 1
                stdout = f"\x1b[0;33mchanged: [host{h}] => task {t}\x1b[0m" if kind == "runner_on_ok" else ""
                messages.append({"type": "event", "id": counter, "event": {
                    "counter": counter, "event": kind, "created": f"2026-01-01T10:{t // 60 % 60:02d}:{t % 60:02d}",
                    "stdout": stdout, "event_data": {"host": f"host{h}", "task": f"task {t}", "duration": 0.25,
                                                     "res": {"changed": True}}}})
    return messages


def best_of(runs: int, work: Callable[[], Any]) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return round(min(times) * 1000, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hosts", type=int, default=50)
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    messages = synthetic_job(args.hosts, args.tasks)
    one_host = [m for m in messages if m["event"]["event_data"]["host"] == "host7"]  # what the indexed query returns
    print(json.dumps({
        "events": len(messages),
        "host_log_ms": best_of(args.runs, lambda: joblog.host_log(one_host, "host7")),
        "search_whole_job_ms": best_of(args.runs, lambda: joblog.search(messages, "nowhere in the output")),
        "text_whole_job_ms": best_of(args.runs, lambda: "".join(joblog.as_text(messages))),
    }, indent=2))


if __name__ == "__main__":
    main()
