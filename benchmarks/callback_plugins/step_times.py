"""Write when each task started and ended on each host, one JSON object per line, for the benchmarks.

Enabled by benchmarks/deploy.py only: ANSIBLE_CALLBACK_PLUGINS points here, ANSIBLE_CALLBACKS_ENABLED
names it, and FLEETDEPLOY_STEP_LOG names the file to append to. Each line has the host, the task's
name, the file it comes from (roles/app_release/tasks/swap_one.yml:34), its status and the start and
end on the controller's clock (time.time()).
"""

from __future__ import annotations

import json
import os
import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: step_times
type: aggregate
short_description: when each task started and ended on each host, as JSON lines
description:
  - Appends one JSON object per task and host to the file named by FLEETDEPLOY_STEP_LOG.
requirements:
  - FLEETDEPLOY_STEP_LOG set to a writable file
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "step_times"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self._path = os.environ.get("FLEETDEPLOY_STEP_LOG", "")
        self._started: dict[tuple[str, str], float] = {}

    def v2_runner_on_start(self, host, task) -> None:  # noqa: ANN001 (Ansible's objects)
        self._started[(host.get_name(), task._uuid)] = time.time()

    def _finish(self, result, status: str) -> None:  # noqa: ANN001
        if not self._path:
            return
        host, task = result._host.get_name(), result._task
        ended = time.time()
        line = {"host": host, "task": task.get_name(), "path": task.get_path() or "", "status": status,
                "start": self._started.pop((host, task._uuid), ended), "end": ended}
        with open(self._path, "a", encoding="utf-8") as log:
            log.write(json.dumps(line) + "\n")

    def v2_runner_on_ok(self, result) -> None:  # noqa: ANN001
        self._finish(result, "ok")

    def v2_runner_on_failed(self, result, ignore_errors: bool = False) -> None:  # noqa: ANN001
        self._finish(result, "failed")

    def v2_runner_on_skipped(self, result) -> None:  # noqa: ANN001
        self._finish(result, "skipped")

    def v2_runner_on_unreachable(self, result) -> None:  # noqa: ANN001
        self._finish(result, "unreachable")
