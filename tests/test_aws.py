"""The AWS paths against moto's server mode: the dynamic inventory from EC2 tags and the shared deploy lock."""

from __future__ import annotations

import json
import os
import time

import boto3
import pytest

from helpers import REPO, VENV_BIN, run
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
    return run([str(VENV_BIN / "ansible"), "localhost", "-m", "fleetdeploy_lock", "-a", json.dumps(args)], **aws.env())


def test_dynamodb_lock_refuses_a_second_holder_and_expires(aws: MotoEndpoint) -> None:
    boto3.client("dynamodb", region_name="eu-west-1").create_table(
        TableName="fleetdeploy-locks", BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "lock", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "lock", "AttributeType": "S"}],
    )
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
