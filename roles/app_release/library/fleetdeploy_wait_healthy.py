#!/usr/bin/python
"""Ansible module: poll a health URL on the host itself until it answers, within a real time bound."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: fleetdeploy_wait_healthy
short_description: Wait until a health URL answers with the expected status
description:
  - Polls O(url) from the managed host every O(interval) seconds until it answers O(status), or
    fails once O(timeout) seconds have passed, with the last status and body it got.
  - One module run does all the polling, so the bound is wall time on the host. A task-level
    C(until)/C(retries) loop pays a round trip over SSH per attempt (about a second and a half
    on a busy controller), which made a 60 s bound last well over two minutes.
options:
  url:
    description: The health URL, usually on 127.0.0.1.
    required: true
    type: str
  timeout:
    description: Seconds to wait at most.
    default: 60
    type: float
  interval:
    description: Seconds between two attempts.
    default: 0.5
    type: float
  status:
    description: The status that counts as healthy.
    default: 200
    type: int
  request_timeout:
    description: Seconds one attempt may take.
    default: 5
    type: float
"""

RETURN = r"""
status:
  description: The last HTTP status, or -1 when the last attempt got no answer.
  type: int
  returned: always
content:
  description: The last body (the first 2000 characters), or the connection error.
  type: str
  returned: always
attempts:
  description: How many requests were made.
  type: int
  returned: always
elapsed:
  description: Seconds from the first attempt to the answer (or the give-up).
  type: float
  returned: always
"""

import time
import urllib.error
import urllib.request

from ansible.module_utils.basic import AnsibleModule


def probe(url: str, timeout: float) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (the URL is ours)
            return response.status, response.read(2000).decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(2000).decode(errors="replace")
    except (OSError, ValueError) as exc:
        return -1, str(getattr(exc, "reason", exc))


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "url": {"type": "str", "required": True},
            "timeout": {"type": "float", "default": 60},
            "interval": {"type": "float", "default": 0.5},
            "status": {"type": "int", "default": 200},
            "request_timeout": {"type": "float", "default": 5},
        },
        supports_check_mode=True,
    )
    p = module.params
    if p["timeout"] <= 0 or p["interval"] <= 0:
        module.fail_json(msg="timeout and interval must be positive")
    started = time.monotonic()
    deadline = started + p["timeout"]
    attempts = 0
    while True:
        attempts += 1
        status, content = probe(p["url"], min(p["request_timeout"], max(0.1, deadline - time.monotonic())))
        result = {"changed": False, "status": status, "content": content, "attempts": attempts,
                  "elapsed": round(time.monotonic() - started, 2)}
        if status == p["status"]:
            module.exit_json(**result)
        if time.monotonic() + p["interval"] > deadline:
            answer = f"HTTP {status}" if status > 0 else f"no answer ({content})"
            module.fail_json(msg=f"{p['url']} did not answer {p['status']} within {p['timeout']:g}s "
                                 f"({attempts} attempts); the last was {answer}", **result)
        time.sleep(p["interval"])


if __name__ == "__main__":
    main()
