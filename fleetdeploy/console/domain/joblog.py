"""A job's log read back from its stored (already redacted) events: per host, searched, or as plain text.

The events are the messages the console streams and stores ({"type": "event", "event": {...}}); nothing
here reads the raw runner output, so whatever the redactor masked stays masked.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Iterator
from typing import Any

# The events that end a task on a host, and the state each leaves (runner/grid.py's cell states).
RESULT_STATES = {"runner_on_ok": "ok", "runner_on_failed": "failed", "runner_on_unreachable": "unreachable",
                 "runner_on_skipped": "skipped"}
# Per-item and retry lines of a loop or an `until`: shown in the host's log, they end nothing.
_ITEM_EVENTS = ("runner_item_on_ok", "runner_item_on_failed", "runner_item_on_skipped", "runner_retry")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# A search answers with this many matching lines at most: a search for "ok" in a flood must stay small.
MAX_MATCHES = 500


def plain(text: str) -> str:
    """Output without its ANSI colour codes."""
    return _ANSI.sub("", text)


def events_of(messages: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The runner events among stored or live messages, in the order given."""
    for msg in messages:
        if msg.get("type") == "event" and isinstance(msg.get("event"), dict):
            yield msg["event"]


def _when(created: Any) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(str(created))
    except ValueError:
        return None


def _elapsed(data: dict[str, Any], started: dt.datetime | None, ended: dt.datetime | None) -> float | None:
    """Seconds the task took on the host: the runner's own `duration`, else end minus start of its events."""
    duration = data.get("duration")
    if isinstance(duration, (int, float)):
        return round(float(duration), 3)
    if started is not None and ended is not None:
        return round((ended - started).total_seconds(), 3)
    return None


def host_log(messages: Iterable[dict[str, Any]], host: str) -> list[dict[str, Any]]:
    """One entry per result (or loop item) of `host`, in the order Ansible ran them, with elapsed seconds."""
    started: dict[str, dt.datetime | None] = {}
    out: list[dict[str, Any]] = []
    for ev in events_of(messages):
        data = ev.get("event_data") or {}
        if data.get("host") != host:
            continue
        kind = str(ev.get("event") or "")
        task = str(data.get("task") or "")
        if kind == "runner_on_start":
            started[task] = _when(ev.get("created"))
            continue
        if kind not in RESULT_STATES and kind not in _ITEM_EVENTS:
            continue
        res = data.get("res") if isinstance(data.get("res"), dict) else {}
        state = RESULT_STATES.get(kind, kind.removeprefix("runner_item_on_").removeprefix("runner_"))
        if state == "ok" and res.get("changed"):
            state = "changed"
        if kind == "runner_on_failed" and data.get("ignore_errors"):
            state = "ok"
        entry: dict[str, Any] = {"counter": ev.get("counter"), "play": str(data.get("play") or ""), "task": task,
                                 "event": kind, "state": state, "created": ev.get("created"),
                                 "stdout": str(ev.get("stdout") or ""), "elapsed": None}
        if kind in RESULT_STATES:
            entry["elapsed"] = _elapsed(data, started.pop(task, None), _when(ev.get("created")))
        out.append(entry)
    return out


def search(messages: Iterable[dict[str, Any]], text: str, host: str | None = None) -> list[dict[str, Any]]:
    """The output lines holding `text` (case-insensitive, colour codes ignored), at most MAX_MATCHES."""
    needle = text.casefold()
    found: list[dict[str, Any]] = []
    for ev in events_of(messages):
        data = ev.get("event_data") or {}
        if host is not None and data.get("host") != host:
            continue
        for line in plain(str(ev.get("stdout") or "")).splitlines():
            if needle in line.casefold():
                found.append({"counter": ev.get("counter"), "host": data.get("host"),
                              "task": str(data.get("task") or ""), "line": line})
                if len(found) >= MAX_MATCHES:
                    return found
    return found


def as_text(messages: Iterable[dict[str, Any]]) -> Iterator[str]:
    """The whole output as ansible-playbook printed it, without colour codes, one event's lines at a time."""
    for ev in events_of(messages):
        stdout = str(ev.get("stdout") or "")
        if stdout:
            yield plain(stdout) + "\n"
