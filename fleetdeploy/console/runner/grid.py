"""The hosts x batches grid, built from ansible-runner events one at a time.

A play with `serial` starts once per batch, so every `playbook_on_play_start` opens a new column.
The server applies each event here and sends the changed cell with it, so the browser only paints.
Hosts also say which release each service serves there (the fact RELEASE_FACT, {service: release},
which the app_release role sets in any playbook that plans or swaps): the dashboard shows that.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Worst first: a cell or a host shows the worst thing that happened to it.
SEVERITY = {"failed": 5, "unreachable": 4, "changed": 3, "ok": 2, "skipped": 1, "pending": 0}
_RECAP_KEYS = ("ok", "changed", "failures", "dark", "skipped", "rescued", "ignored")
RELEASE_FACT = "app_release_running"
# {image:tag: registry digest} the deploy's preflight read from the registry (playbooks/tasks/preflight.yml):
# the release history shows which image a release was.
DIGEST_FACT = "deploy_image_digests"


@dataclass
class Cell:
    state: str = "pending"
    task: str = ""
    running: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"state": self.state, "task": self.task, "running": self.running}


@dataclass
class Grid:
    columns: list[dict[str, Any]] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)
    cells: dict[tuple[str, int], Cell] = field(default_factory=dict)
    recap: dict[str, dict[str, int]] = field(default_factory=dict)
    # {host: {service: release}}, the latest each host reported.
    releases: dict[str, dict[str, str]] = field(default_factory=dict)
    # {image:tag: digest}, as the job's hosts reported them (DIGEST_FACT).
    digests: dict[str, str] = field(default_factory=dict)
    _play_batches: dict[str, int] = field(default_factory=dict)

    def plan(self, hosts: list[str]) -> None:
        """Add the hosts the playbook will touch, so they show as pending before their batch starts."""
        for host in hosts:
            if host not in self.hosts:
                self.hosts.append(host)

    def apply(self, event: dict[str, Any]) -> dict[str, Any]:
        """Fold one runner event into the grid; return what changed: {"column": ...} and/or {"cell": ...}."""
        kind = event.get("event", "")
        data = event.get("event_data") or {}
        if kind == "playbook_on_play_start":
            # Each serial batch is a new play start with a new uuid: the play's name ties them together.
            play_id = str(data.get("play") or data.get("play_uuid") or len(self.columns))
            batch = self._play_batches.get(play_id, 0) + 1
            self._play_batches[play_id] = batch
            column = {"index": len(self.columns), "play": data.get("play") or data.get("name") or "",
                      "batch": batch}
            self.columns.append(column)
            return {"column": column}
        if kind == "playbook_on_stats":
            self.recap = recap_from_stats(data)
            for host in self.recap:
                if host not in self.hosts:
                    self.hosts.append(host)
            return {"recap": self.recap}

        host = str(data.get("host") or "")
        if not host or not kind.startswith("runner_on_") or not self.columns:
            return {}
        if host not in self.hosts:
            self.hosts.append(host)
        col = len(self.columns) - 1
        cell = self.cells.setdefault((host, col), Cell())
        task = str(data.get("task") or "")
        res = data.get("res") or {}
        if kind == "runner_on_start":
            cell.running, cell.task = True, task
            if cell.state == "pending":
                cell.state = "ok"
        elif kind in ("runner_on_ok", "runner_on_failed", "runner_on_unreachable", "runner_on_skipped"):
            cell.running, cell.task = False, task
            if kind == "runner_on_ok":
                new = "changed" if isinstance(res, dict) and res.get("changed") else "ok"
                self._note_releases(host, res)
            elif kind == "runner_on_failed":
                new = "ok" if data.get("ignore_errors") else "failed"
            elif kind == "runner_on_unreachable":
                new = "unreachable"
            else:
                new = "skipped"
            if SEVERITY[new] > SEVERITY[cell.state]:
                cell.state = new
        else:
            return {}
        return {"cell": {"host": host, "col": col, **cell.as_dict()}}

    def halt(self) -> list[dict[str, Any]]:
        """The run ended (a cancel or a crash sends no result for the tasks under way): no cell runs any more.
        Returns the cells that changed."""
        changed = []
        for (host, col), cell in self.cells.items():
            if cell.running:
                cell.running = False
                changed.append({"host": host, "col": col, **cell.as_dict()})
        return changed

    def _note_releases(self, host: str, res: Any) -> None:
        facts = (res.get("ansible_facts") or {}) if isinstance(res, dict) else {}
        reported = facts.get(RELEASE_FACT)
        if isinstance(reported, dict):
            known = self.releases.setdefault(host, {})
            known.update({str(k): str(v) for k, v in reported.items() if v})
        digests = facts.get(DIGEST_FACT)
        if isinstance(digests, dict):
            self.digests.update({str(k): str(v) for k, v in digests.items() if v})

    def host_results(self) -> dict[str, str]:
        """Each host's outcome: from the recap when the play ended, else the worst of its cells."""
        out: dict[str, str] = {}
        for host in self.hosts:
            counts = self.recap.get(host)
            if counts is not None:
                if counts["dark"]:
                    out[host] = "unreachable"
                elif counts["failures"]:
                    out[host] = "failed"
                elif counts["changed"]:
                    out[host] = "changed"
                else:
                    out[host] = "ok"
                continue
            states = [c.state for (h, _), c in self.cells.items() if h == host]
            out[host] = max(states, key=SEVERITY.__getitem__) if states else "pending"
        return out

    def snapshot(self) -> dict[str, Any]:
        return {
            "columns": self.columns,
            "hosts": self.hosts,
            "cells": [{"host": h, "col": c, **cell.as_dict()} for (h, c), cell in self.cells.items()],
            "recap": self.recap,
            "results": self.host_results(),
            "releases": self.releases,
            "digests": self.digests,
        }


def recap_from_stats(data: dict[str, Any]) -> dict[str, dict[str, int]]:
    hosts: set[str] = set()
    for key in _RECAP_KEYS:
        hosts.update((data.get(key) or {}).keys())
    return {h: {k: int((data.get(k) or {}).get(h, 0)) for k in _RECAP_KEYS} for h in sorted(hosts)}
