#!/usr/bin/python
"""Ansible module: update a service's release record on the host, and its deploy marker, in one run."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: fleetdeploy_release_record
short_description: Record a swap's outcome in the service's release record and deploy marker
description:
  - Reads C(<record_dir>/<service>.json) (current, previous, history), adds the swap at the head of
    the history, moves current and previous when the swap succeeded, and writes it back.
  - A deploy makes the release it replaced the previous one. A rollback leaves out the release it
    left: previous becomes the newest good release older than both.
  - After a successful swap it also writes the deploy marker C(fleetdeploy_release_<service>.prom)
    for node_exporter's textfile collector into O(marker_dir), unless that is empty.
  - Every file is written to a temporary file in its folder and renamed, so a reader (a scrape, a
    concurrent rollback's plan) never sees half a file. Folders are created when missing.
  - One module run instead of the seven a file, slurp, copy, file and template sequence costs: the
    deploy runs this on every host, and each module run is about a tenth of a second of the host's CPU.
options:
  record_dir:
    description: The folder of the release records.
    required: true
    type: path
  service:
    description: The service's name.
    required: true
    type: str
  release:
    description: The release the swap tried.
    required: true
    type: str
  action:
    description: What moved the service.
    choices: [deploy, rollback]
    default: deploy
    type: str
  result:
    description: Whether the swap succeeded.
    choices: [ok, failed]
    required: true
    type: str
  user:
    description: Who ran it, for the history.
    required: true
    type: str
  time:
    description: When, in ISO 8601 UTC ending in Z (the controller's clock, the same for every host of a run).
    required: true
    type: str
  history_length:
    description: How many entries the history keeps.
    default: 50
    type: int
  marker_dir:
    description: node_exporter's textfile folder for the deploy marker; empty to write none.
    default: ""
    type: str
"""

RETURN = r"""
record:
  description: The release record as written.
  type: dict
  returned: always
"""

import json
import os
from datetime import datetime, timezone

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.fleetdeploy_files import write_file

MARKER = """\
# HELP fleetdeploy_release_timestamp_seconds Time the running release of the service started on this host.
# TYPE fleetdeploy_release_timestamp_seconds gauge
fleetdeploy_release_timestamp_seconds{{service="{service}",version="{release}"}} {timestamp}
"""


def next_record(found: dict, release: str, action: str, result: str, user: str, at: str, keep: int) -> dict:
    """`found` is the record read (at least its service's name); a first deploy finds no releases yet."""
    old = {"current": "", "previous": "", "history": [], **found}
    moved = result == "ok" and old["current"] != release
    if not moved:
        previous = old["previous"]
    elif action == "deploy":
        previous = old["current"]
    else:
        older = [entry["release"] for entry in old["history"]
                 if entry.get("result") == "ok" and entry.get("release") not in (release, old["current"])]
        previous = older[0] if older else old["previous"]
    entry = {"release": release, "action": action, "result": result, "user": user, "time": at}
    return {"service": old["service"], "current": release if result == "ok" else old["current"],
            "previous": previous, "history": ([entry] + old["history"])[:keep]}


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "record_dir": {"type": "path", "required": True},
            "service": {"type": "str", "required": True},
            "release": {"type": "str", "required": True},
            "action": {"type": "str", "default": "deploy", "choices": ["deploy", "rollback"]},
            "result": {"type": "str", "required": True, "choices": ["ok", "failed"]},
            "user": {"type": "str", "required": True},
            "time": {"type": "str", "required": True},
            "history_length": {"type": "int", "default": 50},
            "marker_dir": {"type": "str", "default": ""},
        },
        supports_check_mode=True,
    )
    p = module.params
    try:
        timestamp = int(datetime.fromisoformat(p["time"].removesuffix("Z")).replace(tzinfo=timezone.utc).timestamp())
    except ValueError:
        module.fail_json(msg=f"time must be ISO 8601 in UTC, like 2026-11-26T17:00:00Z, not {p['time']!r}")
    path = os.path.join(p["record_dir"], f"{p['service']}.json")
    found = {"service": p["service"]}
    try:
        with open(path, encoding="utf-8") as handle:
            found.update(json.load(handle))
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as error:
        module.fail_json(msg=f"cannot read the release record {path}: {error}")
    record = next_record(found, p["release"], p["action"], p["result"], p["user"], p["time"], p["history_length"])
    if not module.check_mode:
        os.makedirs(p["record_dir"], mode=0o755, exist_ok=True)
        write_file(path, (json.dumps(record, indent=4, sort_keys=True) + "\n").encode(), 0o644)
        if p["result"] == "ok" and p["marker_dir"]:
            os.makedirs(p["marker_dir"], mode=0o755, exist_ok=True)
            marker = MARKER.format(service=p["service"], release=p["release"], timestamp=timestamp)
            write_file(os.path.join(p["marker_dir"], f"fleetdeploy_release_{p['service']}.prom"), marker.encode(), 0o644)
    module.exit_json(changed=True, record=record)


if __name__ == "__main__":
    main()
