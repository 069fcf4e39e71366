"""What the console keeps of ansible-runner's events: slimmed and redacted, and the lines that are not events."""

from __future__ import annotations

import json
from typing import Any

from fleetdeploy.console.redact import MAX_STDOUT, Redactor
from fleetdeploy.console.runner.grid import DIGEST_FACT, RELEASE_FACT
from fleetdeploy.console.runner.playbook import HOSTS_PREFIX

# Events the console shows; verbose/debug-only ones (e.g. runner_on_start for items) still count.
_SLIM_RES_KEYS = ("msg", "changed", "failed", "unreachable", "skipped", "rc", "stderr", "censored", "skip_reason")


def slim_event(raw: dict[str, Any], redactor: Redactor) -> dict[str, Any]:
    """The redacted event as stored and streamed: what the log and the grid need, nothing more."""
    data = raw.get("event_data") or {}
    res = data.get("res")
    if isinstance(res, dict):
        if res.get("_ansible_no_log"):
            res = {"censored": True}
        else:
            facts = res.get("ansible_facts") if isinstance(res.get("ansible_facts"), dict) else {}
            res = {k: res[k] for k in _SLIM_RES_KEYS if k in res}
            # Of all facts, only what the dashboard and the release history show.
            shown = {k: facts[k] for k in (RELEASE_FACT, DIGEST_FACT) if k in facts}
            if shown:
                res["ansible_facts"] = shown
    stdout = raw.get("stdout") or ""
    if len(stdout) > MAX_STDOUT:
        stdout = stdout[:MAX_STDOUT] + "\n… (cut)"
    kept: dict[str, Any] = {k: data[k] for k in ("host", "task", "play", "play_uuid", "task_action", "ignore_errors",
                                                 "ok", "changed", "failures", "dark", "skipped", "rescued",
                                                 "ignored", "duration") if k in data}
    if res is not None:
        kept["res"] = res
    ev = {"counter": raw.get("counter"), "event": raw.get("event"), "created": raw.get("created"),
          "stdout": stdout, "event_data": kept}
    return redactor.value(ev)  # type: ignore[no-any-return]


def announced_hosts(event: dict[str, Any]) -> list[str] | None:
    """The hosts a play will run on, if this is the line runner/playbook.py prints as the play starts."""
    if event.get("event") != "verbose":
        return None
    line = (event.get("stdout") or "").strip()
    if not line.startswith(HOSTS_PREFIX):
        return None
    try:
        hosts = json.loads(line[len(HOSTS_PREFIX):])
    except ValueError:
        return None
    return [str(h) for h in hosts] if isinstance(hosts, list) else None


def is_prompt(event: dict[str, Any]) -> bool:
    """The vault prompt that runner answers echoes into the output: noise, not an event."""
    return event.get("event") == "verbose" and (event.get("stdout") or "").strip() == "Vault password:"

