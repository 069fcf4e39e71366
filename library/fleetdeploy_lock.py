#!/usr/bin/python
"""Ansible module: the deploy lock of an environment, in a file on the ops host or a DynamoDB item."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: fleetdeploy_lock
short_description: Take, renew, show or give back the deploy lock of an environment
description:
  - One deploy or rollback at a time per environment. Taking a lock that someone else holds fails
    at once with who holds it, what they run, since when and until when it is kept.
  - A lock whose last renewal (or, never renewed, whose taking) is older than O(ttl) seconds is stale and is
    taken over; O(force=true) takes it whatever its age.
  - A running deploy keeps its lock fresh with V(renewed) and O(interval) started in the background
    (C(async), C(poll=0)) right after the lock is taken. A renewal only rewrites a lock that still carries
    the run's O(run_id): once the lock is released or taken over, the heartbeat stops and never writes it again.
  - The C(file) backend writes the lock atomically (O_EXCL, and renewals by rename under an flock of its
    folder) on the host the module runs on (the ops host). The C(dynamodb) backend writes an item with
    conditional puts, so the lock survives the loss of any host.
options:
  name:
    description: The environment the lock is for.
    required: true
    type: str
  state:
    description:
      - V(acquired) takes the lock.
      - V(released) gives it back; only the holder's own O(run_id) is removed, unless O(force=true)
        (an operator's explicit release, which should give a O(reason)).
      - V(renewed) refreshes the lock of O(run_id); with O(interval) it does so every O(interval) seconds
        until the lock is no longer this run's, or the process O(watch_pid) is gone.
      - V(status) only reads the lock.
    choices: [acquired, released, renewed, status]
    default: acquired
    type: str
  run_id:
    description: Unique id of this run. Required to take or renew; releasing without O(force) removes the
      lock only when it carries this id.
    type: str
  holder:
    description: Who takes the lock (user@controller), shown to anyone refused.
    default: unknown
    type: str
  action:
    description: What the holder runs (deploy v2, rollback, ...), shown to anyone refused.
    default: ""
    type: str
  ttl:
    description: Seconds without a renewal after which a lock is stale (for V(acquired) and V(status)); stored
      in the lock to report when it expires.
    default: 3600
    type: int
  force:
    description: With V(acquired), take the lock even if someone holds it; with V(released), remove it
      whoever holds it.
    default: false
    type: bool
  reason:
    description: Why a lock is released by force, returned for the audit log.
    default: ""
    type: str
  interval:
    description: With V(renewed), keep renewing every this many seconds (0 renews once).
    default: 0
    type: int
  watch_pid:
    description: With V(renewed) and O(interval), stop renewing once this process (the controller's
      ansible-playbook, when the module runs on the controller) has exited, so a dead run's lock expires.
    type: int
  backend:
    description: Where the lock lives.
    choices: [file, dynamodb]
    default: file
    type: str
  path:
    description: The lock file (backend file).
    default: /var/lib/fleetdeploy/deploy.lock
    type: str
  table:
    description: The DynamoDB table, with a string partition key C(lock) (backend dynamodb).
    type: str
  region:
    description: The AWS region (backend dynamodb).
    type: str
author: fleetdeploy
"""

EXAMPLES = r"""
- name: Take the deploy lock of prod
  fleetdeploy_lock:
    name: prod
    run_id: "{{ deploy_run_id }}"
    holder: alice@laptop
    action: deploy v42

- name: Keep it fresh every 20 minutes while the playbook runs
  fleetdeploy_lock:
    name: prod
    state: renewed
    run_id: "{{ deploy_run_id }}"
    ttl: 3600
    interval: 1200
  async: 86400
  poll: 0

- name: Show who holds the lock
  fleetdeploy_lock:
    name: prod
    state: status
  register: lock_status

- name: Release a dead deploy's lock by hand
  fleetdeploy_lock:
    name: prod
    state: released
    force: true
    reason: the controller crashed during deploy v42
"""

RETURN = r"""
lock:
  description: The lock after the call (none when nobody holds it).
  returned: always
  type: dict
  contains:
    name: {description: The environment., type: str}
    run_id: {description: The holder's run id., type: str}
    holder: {description: Who holds it., type: str}
    action: {description: What the holder runs., type: str}
    since: {description: When it was taken (epoch seconds)., type: float}
    renewed: {description: Its last renewal (epoch seconds)., type: float}
    ttl: {description: The holder's TTL in seconds., type: int}
    expires: {description: When it goes stale without another renewal (epoch seconds)., type: float}
    host: {description: The host the module ran on when it was taken., type: str}
held:
  description: Whether anyone holds a lock that is not stale (V(status)).
  returned: always
  type: bool
stale:
  description: Whether the lock found is older than O(ttl) since its last renewal.
  returned: when a lock was found
  type: bool
took_over:
  description: The stale or forced lock that V(acquired) replaced.
  returned: with state acquired
  type: dict
released:
  description: The lock that V(released) removed (none when there was nothing to remove).
  returned: with state released
  type: dict
reason:
  description: The reason given for a release.
  returned: with state released
  type: str
renewals:
  description: How many renewals V(renewed) wrote.
  returned: with state renewed
  type: int
stopped:
  description: Why V(renewed) stopped (lost, the watched process exited, or once).
  returned: with state renewed
  type: str
"""

import fcntl
import json
import os
import socket
import time
from typing import Any

from ansible.module_utils.basic import AnsibleModule


def last_beat(lock: dict[str, Any]) -> float:
    return max(float(lock.get("since", 0)), float(lock.get("renewed", 0)))


def is_stale(lock: dict[str, Any], now: float, ttl: int) -> bool:
    return now - last_beat(lock) > ttl


def iso(stamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))


def describe(lock: dict[str, Any], now: float) -> str:
    since = float(lock.get("since", now))
    text = (f"held by {lock.get('holder', '?')} running '{lock.get('action', '?')}' since "
            f"{iso(since)} ({int(now - since)}s ago)")
    if lock.get("renewed"):
        text += f", last renewed {int(now - float(lock['renewed']))}s ago"
    return text


class FileLock:
    def __init__(self, path: str) -> None:
        self.path = path
        self.folder = os.path.dirname(path) or "."

    def guard(self) -> int:
        """An exclusive flock of the lock's folder: renewals and removals read and write under it."""
        os.makedirs(self.folder, exist_ok=True)
        fd = os.open(self.folder, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd

    def read(self) -> dict[str, Any] | None:
        try:
            with open(self.path, encoding="utf-8") as handle:
                return json.load(handle)
        except FileNotFoundError:
            return None
        except ValueError:
            return {"holder": "an unreadable lock file", "since": 0}

    def create(self, lock: dict[str, Any]) -> bool:
        fd = self.guard()
        try:
            try:
                out = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(out, "w", encoding="utf-8") as handle:
                json.dump(lock, handle)
            return True
        finally:
            os.close(fd)

    def remove(self, expected: dict[str, Any] | None) -> bool:
        fd = self.guard()
        try:
            if expected is not None and self.read() != expected:
                return False
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                return False
            return True
        finally:
            os.close(fd)

    def renew(self, run_id: str, fields: dict[str, Any]) -> dict[str, Any] | None:
        fd = self.guard()
        try:
            current = self.read()
            if current is None or current.get("run_id") != run_id:
                return None  # released or taken over: never written again
            lock = {**current, **fields}
            temp = f"{self.path}.{os.getpid()}.tmp"
            with open(temp, "w", encoding="utf-8") as handle:
                json.dump(lock, handle)
            os.chmod(temp, 0o644)
            os.replace(temp, self.path)
            return lock
        finally:
            os.close(fd)


class DynamoLock:
    def __init__(self, table: str, region: str, name: str) -> None:
        import boto3  # only this backend needs it

        self.client = boto3.client("dynamodb", region_name=region)
        self.table = table
        self.key = {"lock": {"S": name}}
        self.errors = self.client.exceptions

    def read(self) -> dict[str, Any] | None:
        item = self.client.get_item(TableName=self.table, Key=self.key, ConsistentRead=True).get("Item")
        return json.loads(item["body"]["S"]) if item else None

    def item(self, lock: dict[str, Any]) -> dict[str, Any]:
        return {**self.key, "body": {"S": json.dumps(lock)}, "run_id": {"S": str(lock.get("run_id", ""))}}

    def create(self, lock: dict[str, Any]) -> bool:
        try:
            self.client.put_item(
                TableName=self.table,
                Item=self.item(lock),
                ConditionExpression="attribute_not_exists(#k)",
                ExpressionAttributeNames={"#k": "lock"},
            )
        except self.errors.ConditionalCheckFailedException:
            return False
        return True

    def remove(self, expected: dict[str, Any] | None) -> bool:
        if expected is None:
            self.client.delete_item(TableName=self.table, Key=self.key)
            return True
        try:
            self.client.delete_item(
                TableName=self.table,
                Key=self.key,
                ConditionExpression="body = :body",
                ExpressionAttributeValues={":body": {"S": json.dumps(expected)}},
            )
        except self.errors.ConditionalCheckFailedException:
            return False
        return True

    def renew(self, run_id: str, fields: dict[str, Any]) -> dict[str, Any] | None:
        current = self.read()
        if current is None or current.get("run_id") != run_id:
            return None
        lock = {**current, **fields}
        try:
            # Only an item that still carries this run's id is rewritten: a released lock stays released.
            self.client.put_item(
                TableName=self.table,
                Item=self.item(lock),
                ConditionExpression="run_id = :run",
                ExpressionAttributeValues={":run": {"S": run_id}},
            )
        except self.errors.ConditionalCheckFailedException:
            return None
        return lock


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def renew(module: AnsibleModule, store: FileLock | DynamoLock) -> None:
    p = module.params
    if module.check_mode:
        module.exit_json(changed=False, lock=store.read(), renewals=0, stopped="check mode")
    renewals, lock, stopped = 0, None, "once"
    while True:
        now = time.time()
        renewed = store.renew(p["run_id"], {"renewed": now, "ttl": p["ttl"], "expires": now + p["ttl"]})
        if renewed is None:
            stopped = "lost"
            break
        lock, renewals = renewed, renewals + 1
        if p["interval"] <= 0:
            break
        stopped = wait(p["interval"], store, p["run_id"], p["watch_pid"])
        if stopped:
            break
    if renewals == 0 and p["interval"] <= 0:
        module.fail_json(msg=f"The deploy lock of {p['name']} is not held by run {p['run_id']}: nothing to renew.",
                         lock=store.read(), renewals=0, stopped=stopped)
    module.exit_json(changed=renewals > 0, lock=lock, renewals=renewals, stopped=stopped)


def wait(interval: int, store: FileLock | DynamoLock, run_id: str, watch_pid: int | None) -> str:
    """Sleep until the next renewal, looking every few seconds whether there is still a reason to renew:
    a released lock or an exited run ends the heartbeat within seconds, not at its next renewal."""
    deadline = time.time() + interval
    while (left := deadline - time.time()) > 0:
        time.sleep(min(left, 5))
        if watch_pid and not process_alive(watch_pid):
            return "the watched process exited"
        if (store.read() or {}).get("run_id") != run_id:
            return "lost"
    return ""


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "state": {"type": "str", "default": "acquired", "choices": ["acquired", "released", "renewed", "status"]},
            "run_id": {"type": "str"},
            "holder": {"type": "str", "default": "unknown"},
            "action": {"type": "str", "default": ""},
            "ttl": {"type": "int", "default": 3600},
            "force": {"type": "bool", "default": False},
            "reason": {"type": "str", "default": ""},
            "interval": {"type": "int", "default": 0},
            "watch_pid": {"type": "int"},
            "backend": {"type": "str", "default": "file", "choices": ["file", "dynamodb"]},
            "path": {"type": "str", "default": "/var/lib/fleetdeploy/deploy.lock"},
            "table": {"type": "str"},
            "region": {"type": "str"},
        },
        required_if=[
            ("backend", "dynamodb", ("table", "region")),
            ("state", "acquired", ("run_id",)),
            ("state", "renewed", ("run_id",)),
        ],
        supports_check_mode=True,
    )
    p = module.params
    store: FileLock | DynamoLock = (
        FileLock(p["path"]) if p["backend"] == "file" else DynamoLock(p["table"], p["region"], p["name"])
    )
    if p["state"] == "renewed":
        renew(module, store)
    now = time.time()
    current = store.read()

    if p["state"] == "status":
        stale = current is not None and is_stale(current, now, p["ttl"])
        extra = {"stale": stale, "description": describe(current, now)} if current is not None else {}
        module.exit_json(changed=False, lock=current, held=current is not None and not stale, **extra)

    if p["state"] == "released":
        if current is None or not (p["force"] or (p["run_id"] and current.get("run_id") == p["run_id"])):
            module.exit_json(changed=False, lock=current, released=None, reason=p["reason"], held=current is not None)
        removed = True if module.check_mode else store.remove(current)
        module.exit_json(changed=removed, lock=None if removed else store.read(), released=current if removed else None,
                         reason=p["reason"], held=not removed)

    if current is not None and current.get("run_id") == p["run_id"]:
        module.exit_json(changed=False, lock=current, held=True)
    took_over = None
    if current is not None:
        if not (is_stale(current, now, p["ttl"]) or p["force"]):
            module.fail_json(
                msg=f"The deploy lock of {p['name']} is {describe(current, now)}. Wait for it to finish; if it is "
                f"dead, release it (playbooks/lock.yml -e lock_action=release -e lock_reason='...') or run again "
                f"with -e deploy_force_unlock=true (a lock expires {p['ttl']}s after its last renewal).",
                lock=current,
            )
        took_over = current
        if not module.check_mode:
            store.remove(current)
    lock = {
        "name": p["name"],
        "run_id": p["run_id"],
        "holder": p["holder"],
        "action": p["action"],
        "since": now,
        "renewed": now,
        "ttl": p["ttl"],
        "expires": now + p["ttl"],
        "host": socket.gethostname(),
    }
    if module.check_mode:
        module.exit_json(changed=True, lock=lock, took_over=took_over, held=True)
    if not store.create(lock):
        winner = store.read() or {}
        module.fail_json(msg=f"The deploy lock of {p['name']} was just taken: it is {describe(winner, now)}.", lock=winner)
    module.exit_json(changed=True, lock=lock, took_over=took_over, held=True)


if __name__ == "__main__":
    main()
