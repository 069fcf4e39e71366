"""The AWS paths against moto's server mode: the dynamic inventory from EC2 tags and the shared deploy lock."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time

import boto3
import pytest

from helpers import REPO, VENV_BIN, env, run
from moto_endpoint import MotoEndpoint


@pytest.fixture()
def aws(monkeypatch: pytest.MonkeyPatch):
    with MotoEndpoint() as endpoint:
        for key, value in endpoint.env().items():
            monkeypatch.setenv(key, value)
        yield endpoint


def launch(ec2, count: int, **tags: str) -> list[str]:
    image = ec2.describe_images()["Images"][0]["ImageId"]
    reservation = ec2.run_instances(
        ImageId=image, MinCount=count, MaxCount=count, InstanceType="t3.small",
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}],
    )
    return [i["InstanceId"] for i in reservation["Instances"]]


@pytest.mark.parametrize("env", ["staging", "prod"])
def test_aws_ec2_inventory_builds_role_groups_from_tags(aws: MotoEndpoint, env: str) -> None:
    ec2 = boto3.client("ec2", region_name="eu-west-1")
    apps = launch(ec2, 3, fleetdeploy_environment=env, fleetdeploy_roles="app")
    launch(ec2, 1, fleetdeploy_environment=env, fleetdeploy_roles="ops, monitor", Name=f"{env}-ops")
    launch(ec2, 2, fleetdeploy_environment="other", fleetdeploy_roles="app")
    result = run([str(VENV_BIN / "ansible-inventory"), "-i", f"inventories/{env}", "--list"], **aws.env()).check()
    inventory = json.loads(result.output[result.output.index("{"):])
    assert sorted(inventory["app"]["hosts"]) == sorted(apps)
    assert inventory["ops"]["hosts"] == [f"{env}-ops"]
    assert inventory["monitor"]["hosts"] == [f"{env}-ops"]
    # Values from EC2 come back marked unsafe ({"__ansible_unsafe": value}).
    hostvars = {h: {k: v.get("__ansible_unsafe", v) if isinstance(v, dict) else v for k, v in hv.items()}
                for h, hv in inventory["_meta"]["hostvars"].items()}
    assert all(hostvars[h]["ec2_instance_id"] == h for h in apps)
    assert hostvars[apps[0]]["fleetdeploy_environment"] == env  # group_vars/all applies to EC2 hosts


def lock(aws: MotoEndpoint, run_id: str, holder: str, **extra: object):
    args = {"name": "prod", "run_id": run_id, "holder": holder, "action": "deploy v3", "backend": "dynamodb",
            "table": "fleetdeploy-locks", "region": "eu-west-1", **extra}
    return run([str(VENV_BIN / "ansible"), "localhost", "-m", "fleetdeploy_lock", "-a", json.dumps(args)],
               ANSIBLE_CALLBACK_RESULT_FORMAT="json", **aws.env())


def create_lock_table() -> None:
    client = boto3.client("dynamodb", region_name="eu-west-1")
    if "fleetdeploy-locks" in client.list_tables()["TableNames"]:  # moto keeps its state across endpoints
        client.delete_table(TableName="fleetdeploy-locks")
    client.create_table(
        TableName="fleetdeploy-locks", BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "lock", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "lock", "AttributeType": "S"}],
    )


def module_result(run) -> dict:
    """The JSON an ad-hoc `ansible localhost -m ...` printed after `localhost | SUCCESS =>`."""
    return json.loads(run.output[run.output.index("{"):])


def test_dynamodb_lock_refuses_a_second_holder_and_expires(aws: MotoEndpoint) -> None:
    create_lock_table()
    assert lock(aws, "run-a", "alice").returncode == 0
    refused = lock(aws, "run-b", "bob")
    assert refused.returncode != 0
    assert "held by alice running 'deploy v3'" in refused.output
    # Bob cannot release Alice's lock; after its TTL it is stale and Bob takes it over.
    assert lock(aws, "run-b", "bob", state="released").returncode == 0
    assert lock(aws, "run-b", "bob").returncode != 0
    time.sleep(2)
    taken = lock(aws, "run-b", "bob", ttl=1)
    assert taken.returncode == 0, taken.output
    assert "alice" in taken.output  # took_over names the stale holder
    assert lock(aws, "run-b", "bob", state="released").returncode == 0
    assert lock(aws, "run-c", "carol").returncode == 0
    assert lock(aws, "run-d", "dave", force=True).returncode == 0


def wait_for(condition, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.2)


def heartbeat(aws: MotoEndpoint, run_id: str, watch_pid: int, ttl: int) -> subprocess.Popen:
    """The deploy's background renewal (tasks/lock.yml starts it with async), here as its own process."""
    args = {"name": "prod", "state": "renewed", "run_id": run_id, "ttl": ttl, "interval": max(ttl // 3, 1),
            "watch_pid": watch_pid, "backend": "dynamodb", "table": "fleetdeploy-locks", "region": "eu-west-1"}
    return subprocess.Popen([str(VENV_BIN / "ansible"), "localhost", "-m", "fleetdeploy_lock", "-a", json.dumps(args)],
                            cwd=REPO, env=env(ANSIBLE_CALLBACK_RESULT_FORMAT="json", **aws.env()), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def held_lock() -> dict | None:
    """The lock item as the module wrote it, read straight from the table (faster than the module)."""
    item = boto3.client("dynamodb", region_name="eu-west-1").get_item(
        TableName="fleetdeploy-locks", Key={"lock": {"S": "prod"}}, ConsistentRead=True).get("Item")
    return json.loads(item["body"]["S"]) if item else None


def test_dynamodb_lock_shows_its_holder_keeps_fresh_past_its_ttl_and_is_released_for_good(aws: MotoEndpoint) -> None:
    """status says who, since, action and expires; a heartbeat keeps a lock past its TTL while the process
    it watches lives, stops when that process exits (the lock then expires), and never writes a released
    lock again."""
    create_lock_table()
    ttl = 6
    lock(aws, "run-a", "alice", ttl=ttl).check()
    status = module_result(lock(aws, "-", "-", state="status").check())
    assert status["held"] is True and status["stale"] is False
    held = status["lock"]
    assert (held["holder"], held["action"], held["run_id"]) == ("alice", "deploy v3", "run-a")
    assert held["expires"] == pytest.approx(held["since"] + ttl)

    controller = subprocess.Popen(["sleep", "600"])  # stands in for alice's ansible-playbook
    beating = heartbeat(aws, "run-a", controller.pid, ttl)
    try:
        wait_for(lambda: (held_lock() or {}).get("renewed", 0) > held["since"], "the heartbeat renews alice's lock")
        # Wait until the lock is older than its TTL: without the heartbeat it would be stale now.
        wait_for(lambda: time.time() - held["since"] > ttl + 1, "alice's lock is older than its TTL")
        refused = lock(aws, "run-b", "bob", ttl=ttl)
        assert refused.returncode != 0, refused.output
        assert re.search(r"held by alice running 'deploy v3' since .*, last renewed \d+s ago", refused.output)
        renewed = held_lock() or {}
        assert renewed["renewed"] > held["since"] and renewed["expires"] == pytest.approx(renewed["renewed"] + ttl)
    finally:
        controller.kill()
        controller.wait()
    # alice's controller is gone: the heartbeat stops, and her lock goes stale one TTL later.
    output = beating.communicate(timeout=120)[0]
    assert beating.returncode == 0 and "the watched process exited" in output, output
    last = (held_lock() or {})["renewed"]
    wait_for(lambda: time.time() - last > ttl, "alice's lock is stale")
    taken = lock(aws, "run-b", "bob", ttl=ttl)
    assert taken.returncode == 0 and "alice" in taken.output, taken.output

    # An operator releases bob's lock, with a reason, while bob's heartbeat runs: it stops and never
    # writes the lock again.
    controller = subprocess.Popen(["sleep", "600"])
    try:
        beating = heartbeat(aws, "run-b", controller.pid, ttl)
        since = module_result(taken)["lock"]["since"]
        wait_for(lambda: (held_lock() or {}).get("renewed", 0) > since, "bob's lock is renewed")
        released = module_result(lock(aws, "-", "carol", state="released", force=True, reason="bob's laptop died")
                                 .check())
        assert released["released"]["holder"] == "bob" and released["reason"] == "bob's laptop died"
        output = beating.communicate(timeout=120)[0]
    finally:
        controller.kill()
        controller.wait()
    assert beating.returncode == 0 and '"stopped": "lost"' in output, output
    assert held_lock() is None
    assert module_result(lock(aws, "-", "-", state="status").check())["held"] is False


def test_an_audit_record_goes_to_dynamodb_once(aws: MotoEndpoint) -> None:
    create_lock_table()
    record = {"environment": "prod", "action": "deploy", "release": "v3", "user": "alice", "run_id": "run-a",
              "started": "2026-01-01T10:00:00Z", "ended": "2026-01-01T10:05:00Z", "result": "ok",
              "hosts": {"i-1": "changed"}}
    args = {"record": record, "destinations": ["dynamodb"], "table": "fleetdeploy-locks", "region": "eu-west-1"}
    command = [str(VENV_BIN / "ansible"), "localhost", "-m", "fleetdeploy_audit", "-a", json.dumps(args)]
    assert module_result(run(command, ANSIBLE_CALLBACK_RESULT_FORMAT="json", **aws.env()).check())["written"] == [
        "dynamodb"]
    # A retried task records nothing new.
    assert module_result(run(command, ANSIBLE_CALLBACK_RESULT_FORMAT="json", **aws.env()).check())["written"] == []
    assert audit_items() == [record]


def audit_items(environment: str = "prod") -> list[dict]:
    """The audit records kept in the lock table, oldest first."""
    items = boto3.client("dynamodb", region_name="eu-west-1").scan(TableName="fleetdeploy-locks")["Items"]
    found = [item for item in items if item["lock"]["S"].startswith(f"audit/{environment}/")]
    return [json.loads(item["body"]["S"]) for item in sorted(found, key=lambda item: item["lock"]["S"])]


def test_the_delivery_figures_read_the_audit_records_kept_in_dynamodb(aws: MotoEndpoint) -> None:
    """fleetdeploy-dora --dynamodb: the records the audit module put beside the lock (an environment
    without an ops host keeps them only there), not the lock's own items; a missing table is a clear error."""
    create_lock_table()
    records = [
        {"environment": "prod", "action": "deploy", "release": "v1", "user": "ci", "run_id": "run-1",
         "started": "2026-11-30T09:50:00Z", "ended": "2026-11-30T10:00:00Z", "result": "ok", "hosts": {"i-1": "changed"},
         "images": {"web:v1": "sha256:1"}, "revisions": {"web:v1": {"revision": "a" * 40, "committed": "2026-11-30T08:00:00Z"}}},
        {"environment": "prod", "action": "deploy", "release": "v2", "user": "ci", "run_id": "run-2",
         "started": "2026-12-01T09:50:00Z", "ended": "2026-12-01T10:00:00Z", "result": "failed", "hosts": {"i-1": "failed"},
         "images": {"web:v2": "sha256:2"}},
        {"environment": "prod", "action": "rollback", "release": "previous", "user": "ci", "run_id": "run-3",
         "started": "2026-12-01T10:50:00Z", "ended": "2026-12-01T11:00:00Z", "result": "ok", "hosts": {"i-1": "changed"}},
        {"environment": "staging", "action": "deploy", "release": "v2", "user": "ci", "run_id": "run-4",
         "started": "2026-11-30T09:00:00Z", "ended": "2026-11-30T09:10:00Z", "result": "ok", "hosts": {"i-2": "changed"},
         "images": {"web:v2": "sha256:2"}},
    ]
    for record in records:
        args = {"record": record, "destinations": ["dynamodb"], "table": "fleetdeploy-locks", "region": "eu-west-1"}
        run([str(VENV_BIN / "ansible"), "localhost", "-m", "fleetdeploy_audit", "-a", json.dumps(args)], **aws.env()).check()
    # The table also holds the lock itself, which is no record.
    boto3.client("dynamodb", region_name="eu-west-1").put_item(
        TableName="fleetdeploy-locks", Item={"lock": {"S": "prod"}, "holder": {"S": "bob"}})
    figures = run([str(VENV_BIN / "fleetdeploy-dora"), "--dynamodb", "fleetdeploy-locks", "--region", "eu-west-1",
                   "--now", "2026-12-02T00:00:00Z", "--days", "10", "--format", "json"], **aws.env())
    assert figures.returncode == 0, figures.output
    rows = {(row["environment"], row["service"]): row for row in json.loads(figures.output)}
    # prod: two deployments of web, one reached the fleet (2 h from commit), one failed and was restored by
    # the rollback an hour later; staging: one, on its own.
    web = rows[("prod", "web")]
    assert (web["deployments"], web["reached_fleet"], web["failed"]) == (2, 1, 1), web
    assert web["lead_time_median_seconds"] == 2 * 3600 and web["time_to_restore_median_seconds"] == 3600, web
    assert rows[("staging", "web")]["deployments"] == 1 and set(rows) == {
        ("prod", "web"), ("prod", "*"), ("staging", "web"), ("staging", "*")}
    missing = run([str(VENV_BIN / "fleetdeploy-dora"), "--dynamodb", "no-such-table", "--region", "eu-west-1"], **aws.env())
    assert missing.returncode == 2 and "cannot read the audit records in DynamoDB table no-such-table" in missing.output, (
        missing.output)
