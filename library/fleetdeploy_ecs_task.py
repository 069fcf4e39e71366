#!/usr/bin/python
"""Ansible module: run a one-off ECS task (a release task such as a migration) and wait for its exit code."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: fleetdeploy_ecs_task
short_description: Run a one-off ECS task to its end and fail unless it exits 0
description:
  - Runs one task of O(task_definition) on O(cluster) with O(command) instead of the image's, waits until
    it has stopped, and fails when it did not start, outlasted O(timeout), or its container exited non-zero.
  - C(community.aws.ecs_task) can run a task but waits only until it is running, not until it has ended,
    and does not report the exit code; a release task's result is its exit code.
  - A task that outlasts O(timeout) is stopped before the module fails, so it cannot finish later behind
    the deploy's back.
options:
  cluster:
    description: The ECS cluster's name.
    required: true
    type: str
  task_definition:
    description: The task definition (family:revision or ARN) whose first container runs O(command).
    required: true
    type: str
  container:
    description: The container to run O(command) in.
    required: true
    type: str
  command:
    description: The command, as a list, instead of the image's.
    required: true
    type: list
    elements: str
  subnets:
    description: Subnets of the task's network interface (awsvpc).
    required: true
    type: list
    elements: str
  security_groups:
    description: Security groups of the task's network interface.
    required: true
    type: list
    elements: str
  launch_type:
    description: Where the task runs.
    choices: [FARGATE, EC2]
    default: FARGATE
    type: str
  timeout:
    description: Seconds the task may take, from the start to its exit.
    default: 300
    type: int
  poll:
    description: Seconds between two looks at the task.
    default: 5
    type: int
  region:
    description: The AWS region.
    required: true
    type: str
author: fleetdeploy
"""

EXAMPLES = r"""
- name: Migrate the database from the release's task definition
  fleetdeploy_ecs_task:
    cluster: fleetdeploy-staging
    task_definition: fleetdeploy-staging-web:7
    container: web
    command: [python3, manage.py, migrate, --noinput]
    subnets: [subnet-1, subnet-2]
    security_groups: [sg-1]
    region: eu-west-1
"""

RETURN = r"""
task_arn:
  description: The task that ran.
  returned: when the task started
  type: str
exit_code:
  description: The container's exit code.
  returned: when the task stopped with one
  type: int
stopped_reason:
  description: Why ECS stopped the task.
  returned: when the task stopped
  type: str
"""

import time
from typing import Any

from ansible.module_utils.basic import AnsibleModule

try:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError
except ImportError:  # reported by main()
    boto3 = None


def run(module: AnsibleModule, ecs: Any) -> dict[str, Any]:
    params = module.params
    started = ecs.run_task(
        cluster=params["cluster"], taskDefinition=params["task_definition"], count=1,
        launchType=params["launch_type"], startedBy="fleetdeploy-release-task",
        networkConfiguration={"awsvpcConfiguration": {
            "subnets": params["subnets"], "securityGroups": params["security_groups"], "assignPublicIp": "DISABLED"}},
        overrides={"containerOverrides": [{"name": params["container"], "command": params["command"]}]})
    if not started["tasks"]:
        module.fail_json(msg=f"ECS did not start the task: {started.get('failures')}", changed=False)
    arn = started["tasks"][0]["taskArn"]
    deadline = time.monotonic() + params["timeout"]
    while True:
        task = ecs.describe_tasks(cluster=params["cluster"], tasks=[arn])["tasks"][0]
        if task["lastStatus"] == "STOPPED":
            break
        if time.monotonic() > deadline:
            ecs.stop_task(cluster=params["cluster"], task=arn, reason="fleetdeploy: release task timed out")
            module.fail_json(msg=f"The task outlasted its {params['timeout']} s and was stopped", task_arn=arn,
                             changed=True)
        time.sleep(params["poll"])
    container = next((c for c in task.get("containers", []) if c.get("name") == params["container"]), {})
    result = {"task_arn": arn, "stopped_reason": task.get("stoppedReason", ""), "changed": True}
    if "exitCode" not in container:
        module.fail_json(msg=f"The task stopped without an exit code: {result['stopped_reason']}", **result)
    result["exit_code"] = container["exitCode"]
    if container["exitCode"] != 0:
        module.fail_json(msg=f"The task exited {container['exitCode']}: {result['stopped_reason']}", **result)
    return result


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "cluster": {"type": "str", "required": True},
            "task_definition": {"type": "str", "required": True},
            "container": {"type": "str", "required": True},
            "command": {"type": "list", "elements": "str", "required": True},
            "subnets": {"type": "list", "elements": "str", "required": True},
            "security_groups": {"type": "list", "elements": "str", "required": True},
            "launch_type": {"type": "str", "default": "FARGATE", "choices": ["FARGATE", "EC2"]},
            "timeout": {"type": "int", "default": 300},
            "poll": {"type": "int", "default": 5},
            "region": {"type": "str", "required": True},
        },
    )
    if boto3 is None:
        module.fail_json(msg="fleetdeploy_ecs_task needs boto3 on the controller")
    try:
        module.exit_json(**run(module, boto3.client("ecs", region_name=module.params["region"])))
    except (BotoCoreError, ClientError) as error:
        module.fail_json(msg=f"Running the task failed: {error}")


if __name__ == "__main__":
    main()
