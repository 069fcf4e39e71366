#!/usr/bin/python
"""Ansible module: the deploy lock of an environment, in a file on the ops host or a DynamoDB item."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: fleetdeploy_lock
short_description: Take or give back the deploy lock of an environment
description:
  - One deploy or rollback at a time per environment. Taking a lock that someone else holds fails
    at once with who holds it, what they run and since when.
  - A lock older than O(ttl) seconds is stale and is taken over; O(force=true) takes it whatever its age.
  - The C(file) backend writes the lock atomically (O_EXCL) on the host the module runs on (the ops host).
    The C(dynamodb) backend writes an item with a conditional put, so the lock survives the loss of any host.
options:
  name:
    description: The environment the lock is for.
    required: true
    type: str
  state:
    description: V(acquired) takes the lock, V(released) gives it back (only the holder's own O(run_id) is removed).
    choices: [acquired, released]
    default: acquired
    type: str
  run_id:
    description: Unique id of this run; releasing removes the lock only when it carries this id.
    required: true
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
    description: Seconds after which a lock is stale.
    default: 3600
    type: int
  force:
    description: Take the lock even if someone holds it.
    default: false
    type: bool
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
"""

import json
import os
import socket
import time

from ansible.module_utils.basic import AnsibleModule


def describe(lock: dict, now: float) -> str:
    age = int(now - float(lock.get("since", now)))
    return (
        f"held by {lock.get('holder', '?')} running '{lock.get('action', '?')}' since "
        f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(float(lock.get('since', now))))} ({age}s ago)"
    )


class FileLock:
    def __init__(self, path: str) -> None:
        self.path = path

    def read(self) -> dict | None:
        try:
            with open(self.path, encoding="utf-8") as handle:
                return json.load(handle)
        except FileNotFoundError:
            return None
        except ValueError:
            return {"holder": "an unreadable lock file", "since": 0}

    def create(self, lock: dict) -> bool:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(lock, handle)
        return True

    def remove(self, expected: dict | None) -> None:
        if expected is None or self.read() == expected:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


class DynamoLock:
    def __init__(self, module: AnsibleModule, table: str, region: str, name: str) -> None:
        import boto3  # only this backend needs it

        self.client = boto3.client("dynamodb", region_name=region)
        self.table = table
        self.key = {"lock": {"S": name}}
        self.errors = self.client.exceptions

    def read(self) -> dict | None:
        item = self.client.get_item(TableName=self.table, Key=self.key, ConsistentRead=True).get("Item")
        return json.loads(item["body"]["S"]) if item else None

    def create(self, lock: dict) -> bool:
        try:
            self.client.put_item(
                TableName=self.table,
                Item={**self.key, "body": {"S": json.dumps(lock)}},
                ConditionExpression="attribute_not_exists(#k)",
                ExpressionAttributeNames={"#k": "lock"},
            )
        except self.errors.ConditionalCheckFailedException:
            return False
        return True

    def remove(self, expected: dict | None) -> None:
        if expected is None:
            self.client.delete_item(TableName=self.table, Key=self.key)
            return
        try:
            self.client.delete_item(
                TableName=self.table,
                Key=self.key,
                ConditionExpression="body = :body",
                ExpressionAttributeValues={":body": {"S": json.dumps(expected)}},
            )
        except self.errors.ConditionalCheckFailedException:
            pass


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "state": {"type": "str", "default": "acquired", "choices": ["acquired", "released"]},
            "run_id": {"type": "str", "required": True},
            "holder": {"type": "str", "default": "unknown"},
            "action": {"type": "str", "default": ""},
            "ttl": {"type": "int", "default": 3600},
            "force": {"type": "bool", "default": False},
            "backend": {"type": "str", "default": "file", "choices": ["file", "dynamodb"]},
            "path": {"type": "str", "default": "/var/lib/fleetdeploy/deploy.lock"},
            "table": {"type": "str"},
            "region": {"type": "str"},
        },
        required_if=[("backend", "dynamodb", ("table", "region"))],
        supports_check_mode=True,
    )
    p = module.params
    store = FileLock(p["path"]) if p["backend"] == "file" else DynamoLock(module, p["table"], p["region"], p["name"])
    now = time.time()
    current = store.read()

    if p["state"] == "released":
        if current is None or current.get("run_id") != p["run_id"]:
            module.exit_json(changed=False, lock=current)
        if not module.check_mode:
            store.remove(current)
        module.exit_json(changed=True, lock=None)

    if current is not None and current.get("run_id") == p["run_id"]:
        module.exit_json(changed=False, lock=current)
    took_over = None
    if current is not None:
        stale = now - float(current.get("since", 0)) > p["ttl"]
        if not (stale or p["force"]):
            module.fail_json(
                msg=f"The deploy lock of {p['name']} is {describe(current, now)}. Wait for it to finish, or, "
                f"if it is dead, run again with -e deploy_force_unlock=true (a lock expires after {p['ttl']}s).",
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
        "host": socket.gethostname(),
    }
    if module.check_mode:
        module.exit_json(changed=True, lock=lock, took_over=took_over)
    if not store.create(lock):
        winner = store.read() or {}
        module.fail_json(msg=f"The deploy lock of {p['name']} was just taken: it is {describe(winner, now)}.", lock=winner)
    module.exit_json(changed=True, lock=lock, took_over=took_over)


if __name__ == "__main__":
    main()
