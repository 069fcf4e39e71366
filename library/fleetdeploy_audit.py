#!/usr/bin/python
"""Ansible module: append one run's record to the audit log: a file and the journal of a host, or DynamoDB."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: fleetdeploy_audit
short_description: Record a deploy, rollback or site run in the audit log
description:
  - Appends one record (a JSON object) to each of O(destinations).
  - V(file) appends it as one line to O(path) (created with mode 0640 in a 0750 folder).
  - V(journal) sends it to the journal of the host the module runs on, through journald's native socket,
    with structured fields (C(SYSLOG_IDENTIFIER=fleetdeploy-audit), C(ACTION), C(RELEASE), C(ACTOR),
    C(RESULT), C(HOSTS), C(ENVIRONMENT), C(RUN_ID), C(STARTED), C(ENDED), and the whole record as
    C(AUDIT_RECORD)), so the log shipping carries it off the host.
  - V(dynamodb) puts it as an item of O(table) under the key C(audit/<environment>/<started>/<run_id>);
    a put of a run already recorded changes nothing, so a retried task never records a run twice.
options:
  record:
    description: The record. C(environment), C(action), C(result), C(started) and C(run_id) are required;
      C(user) (the actor), C(release), C(ended) and C(hosts) (host to outcome) are written to the journal's fields.
    required: true
    type: dict
  destinations:
    description: Where the record goes.
    type: list
    elements: str
    choices: [file, journal, dynamodb]
    default: [file, journal]
  path:
    description: The audit log file (destination file).
    default: /var/log/fleetdeploy/audit.log
    type: str
  identifier:
    description: The journal's C(SYSLOG_IDENTIFIER) of the record.
    default: fleetdeploy-audit
    type: str
  table:
    description: The DynamoDB table, with a string partition key C(lock) (the deploy lock's table).
    type: str
  region:
    description: The AWS region (destination dynamodb).
    type: str
author: fleetdeploy
"""

EXAMPLES = r"""
- name: Record the deploy on the ops host, in the audit log file and the journal
  fleetdeploy_audit:
    record:
      environment: prod
      action: deploy
      release: v42
      user: alice
      run_id: 6f1c...
      started: "2026-01-01T10:00:00Z"
      ended: "2026-01-01T10:07:00Z"
      result: ok
      hosts: {app1: changed, app2: changed}

- name: Keep the same record in DynamoDB
  fleetdeploy_audit:
    record: "{{ audit_record }}"
    destinations: [dynamodb]
    table: fleetdeploy-locks
    region: eu-west-1
  delegate_to: localhost
"""

RETURN = r"""
record:
  description: The record written.
  returned: always
  type: dict
written:
  description: The destinations the record was written to (a DynamoDB record already there is left out).
  returned: always
  type: list
  elements: str
"""

import json
import os
import socket
import struct
from typing import Any

from ansible.module_utils.basic import AnsibleModule

JOURNAL_SOCKET = "/run/systemd/journal/socket"
REQUIRED = ("environment", "action", "result", "started", "run_id")


def journal_fields(record: dict[str, Any], identifier: str) -> dict[str, str]:
    hosts = record.get("hosts") or {}
    return {
        "MESSAGE": (f"{record['action']} {record.get('release', '')} by {record.get('user', '?')} on "
                    f"{record['environment']}: {record['result']}"),
        "PRIORITY": "5" if record["result"] == "ok" else "4",
        "SYSLOG_IDENTIFIER": identifier,
        "ENVIRONMENT": str(record["environment"]),
        "ACTION": str(record["action"]),
        "RELEASE": str(record.get("release", "")),
        "ACTOR": str(record.get("user", "")),
        "RESULT": str(record["result"]),
        "RUN_ID": str(record["run_id"]),
        "STARTED": str(record["started"]),
        "ENDED": str(record.get("ended", "")),
        "HOSTS": " ".join(f"{host}={outcome}" for host, outcome in sorted(hosts.items())),
        "AUDIT_RECORD": json.dumps(record, sort_keys=True),
    }


def journal_datagram(fields: dict[str, str]) -> bytes:
    """journald's native protocol: KEY=value lines, or KEY, a 64-bit length and the raw value for multi-line values."""
    parts = []
    for key, value in fields.items():
        data = value.encode()
        if b"\n" in data:
            parts.append(key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n")
        else:
            parts.append(key.encode() + b"=" + data + b"\n")
    return b"".join(parts)


def to_journal(record: dict[str, Any], identifier: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(journal_datagram(journal_fields(record, identifier)), JOURNAL_SOCKET)


def to_file(record: dict[str, Any], path: str) -> None:
    os.makedirs(os.path.dirname(path), mode=0o750, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    try:
        # One write of one line: appends from two runs never interleave.
        os.write(fd, (json.dumps(record) + "\n").encode())
    finally:
        os.close(fd)


def to_dynamodb(record: dict[str, Any], table: str, region: str) -> bool:
    import boto3  # only this destination needs it

    client = boto3.client("dynamodb", region_name=region)
    key = f"audit/{record['environment']}/{record['started']}/{record['run_id']}"
    try:
        client.put_item(
            TableName=table,
            Item={"lock": {"S": key}, "environment": {"S": str(record["environment"])},
                  "started": {"S": str(record["started"])}, "body": {"S": json.dumps(record)}},
            ConditionExpression="attribute_not_exists(#k)",
            ExpressionAttributeNames={"#k": "lock"},
        )
    except client.exceptions.ConditionalCheckFailedException:
        return False
    return True


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "record": {"type": "dict", "required": True},
            "destinations": {"type": "list", "elements": "str", "default": ["file", "journal"],
                             "choices": ["file", "journal", "dynamodb"]},
            "path": {"type": "str", "default": "/var/log/fleetdeploy/audit.log"},
            "identifier": {"type": "str", "default": "fleetdeploy-audit"},
            "table": {"type": "str"},
            "region": {"type": "str"},
        },
        supports_check_mode=True,
    )
    p = module.params
    record = p["record"]
    missing = [key for key in REQUIRED if not record.get(key)]
    if missing:
        module.fail_json(msg=f"The audit record lacks {', '.join(missing)}.", record=record)
    if "dynamodb" in p["destinations"] and not (p["table"] and p["region"]):
        module.fail_json(msg="The dynamodb destination needs table and region.", record=record)
    if module.check_mode:
        module.exit_json(changed=True, record=record, written=[])
    written = []
    if "file" in p["destinations"]:
        to_file(record, p["path"])
        written.append("file")
    if "journal" in p["destinations"]:
        try:
            to_journal(record, p["identifier"])
        except OSError as error:
            module.fail_json(msg=f"journald did not take the audit record ({JOURNAL_SOCKET}): {error}", record=record,
                             written=written)
        written.append("journal")
    if "dynamodb" in p["destinations"] and to_dynamodb(record, p["table"], p["region"]):
        written.append("dynamodb")
    module.exit_json(changed=bool(written), record=record, written=written)


if __name__ == "__main__":
    main()
