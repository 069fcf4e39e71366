"""playbooks/join.yml against moto's server mode: an instance the Auto Scaling group launches waits in the launch
lifecycle hook (moto_endpoint.py holds it in Pending:Wait as AWS does, which moto alone does not), is readied
under the deploy lock on the release the hosts in service run, enters the target group only once ready, and
completes its lifecycle action with CONTINUE, or with ABANDON when readying it failed.

moto's instances cannot be reached, so the step that readies the host (site.yml limited to it) is a stand-in,
tests/join_ready_standin.py, and the hosts in service answer from local release records (connection local);
everything around it (the hook, the lock, the release read, the target group, the lifecycle action, the audit
record) runs as it does against AWS. docs/aws.md says what stays unchecked."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import yaml

from helpers import REPO, VENV_BIN, Run, playbook, run
from moto_endpoint import MotoEndpoint

REGION = "eu-west-1"
GROUP = "fleetdeploy-staging-app"
HOOK = "fleetdeploy-staging-join"


@pytest.fixture(scope="module")
def aws() -> Iterator[MotoEndpoint]:
    """What of the staging infrastructure a join touches, made with boto3 as infra.yml makes it (the group, its
    target group, the lock's table), then the hook by infra.yml's own task file. The group's two first
    instances were launched before the hook existed, and serve."""
    with pytest.MonkeyPatch.context() as patch, MotoEndpoint() as endpoint:
        for key, value in endpoint.env().items():
            patch.setenv(key, value)
        endpoint.reset()
        ec2 = boto3.client("ec2", region_name=REGION)
        vpc = ec2.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.20.1.0/24", AvailabilityZone=f"{REGION}a")["Subnet"]
        target_group = boto3.client("elbv2", region_name=REGION).create_target_group(
            Name=GROUP, Protocol="HTTP", Port=80, VpcId=vpc, TargetType="instance")["TargetGroups"][0]
        ec2.create_launch_template(LaunchTemplateName=GROUP, LaunchTemplateData={
            "ImageId": ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"], "InstanceType": "t3.small"})
        boto3.client("autoscaling", region_name=REGION).create_auto_scaling_group(
            AutoScalingGroupName=GROUP, LaunchTemplate={"LaunchTemplateName": GROUP, "Version": "$Latest"},
            MinSize=1, MaxSize=10, DesiredCapacity=2, VPCZoneIdentifier=subnet["SubnetId"],
            TargetGroupARNs=[target_group["TargetGroupArn"]],
            Tags=[{"Key": k, "Value": v, "PropagateAtLaunch": True}
                  for k, v in {"fleetdeploy_environment": "staging", "fleetdeploy_roles": "app"}.items()])
        boto3.client("dynamodb", region_name=REGION).create_table(
            TableName="fleetdeploy-locks", BillingMode="PAY_PER_REQUEST",
            KeySchema=[{"AttributeName": "lock", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "lock", "AttributeType": "S"}])
        playbook("tests/fixtures/join/hook.yml", "-i", "inventories/staging", **endpoint.env()).check()
        yield endpoint


def instances(state: str) -> list[str]:
    group = boto3.client("autoscaling", region_name=REGION).describe_auto_scaling_groups(
        AutoScalingGroupNames=[GROUP])["AutoScalingGroups"][0]
    return sorted(i["InstanceId"] for i in group["Instances"] if i["LifecycleState"] == state)


def in_target_group() -> set[str]:
    elb = boto3.client("elbv2", region_name=REGION)
    arn = elb.describe_target_groups(Names=[GROUP])["TargetGroups"][0]["TargetGroupArn"]
    return {t["Target"]["Id"] for t in elb.describe_target_health(TargetGroupArn=arn)["TargetHealthDescriptions"]}


def scale_out() -> str:
    """One more instance in the group; the one now waiting in the hook."""
    autoscaling = boto3.client("autoscaling", region_name=REGION)
    before = set(instances("Pending:Wait"))
    group = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[GROUP])["AutoScalingGroups"][0]
    autoscaling.set_desired_capacity(AutoScalingGroupName=GROUP, DesiredCapacity=group["DesiredCapacity"] + 1)
    (new,) = set(instances("Pending:Wait")) - before
    return new


def join(aws: MotoEndpoint, tmp_path: Path, exit_code: int = 0, **extra: object) -> tuple[Run, dict]:
    """join.yml with the stand-in readying the host; the hosts in service answer from release records on v7."""
    records = tmp_path / "releases"
    records.mkdir(exist_ok=True)
    (records / "demo.json").write_text(json.dumps({"service": "demo", "current": "v7", "previous": "v6"}))
    local = {"ansible_connection": "local", "ansible_become": False, "ansible_python_interpreter": sys.executable}
    (tmp_path / "serving.yml").write_text(yaml.safe_dump({"all": {"hosts": {i: local for i in instances("InService")}}}))
    report = tmp_path / "ready.json"
    result = playbook("join.yml", "-i", "inventories/staging", "-i", str(tmp_path / "serving.yml"), extra_vars={
        "join_ready_command": [sys.executable, str(REPO / "tests" / "join_ready_standin.py"), str(report), str(exit_code)],
        "join_release_record_dir": str(records), "join_healthy_timeout": 30, **extra}, **aws.env())
    return result, json.loads(report.read_text()) if report.exists() else {}


def lifecycle_actions(aws: MotoEndpoint, instance: str) -> list[tuple[float, str]]:
    return [(c.time, c.params["LifecycleActionResult"][0]) for c in aws.recorder.actions("CompleteLifecycleAction")
            if c.params.get("InstanceId") == [instance] and c.params.get("LifecycleHookName") == [HOOK]
            and c.params.get("AutoScalingGroupName") == [GROUP]]


def registrations(aws: MotoEndpoint, instance: str) -> list[float]:
    return [c.time for c in aws.recorder.actions("RegisterTargets") if instance in c.params.get("Targets.member.1.Id", [])]


def lock_holder() -> dict:
    item = boto3.client("dynamodb", region_name=REGION).get_item(TableName="fleetdeploy-locks",
                                                                 Key={"lock": {"S": "staging"}}).get("Item")
    return item or {}


def test_the_hook_holds_new_instances_and_abandons_them_by_default(aws: MotoEndpoint) -> None:
    (hook,) = boto3.client("autoscaling", region_name=REGION).describe_lifecycle_hooks(
        AutoScalingGroupName=GROUP)["LifecycleHooks"]
    assert hook["LifecycleHookName"] == HOOK
    assert hook["LifecycleTransition"] == "autoscaling:EC2_INSTANCE_LAUNCHING"
    assert (hook["HeartbeatTimeout"], hook["DefaultResult"]) == (1800, "ABANDON")


def test_a_new_instance_is_readied_under_the_lock_on_the_fleets_release_then_registered_then_continued(
        aws: MotoEndpoint, tmp_path: Path) -> None:
    serving = instances("InService")
    new = scale_out()
    assert new not in in_target_group()  # waiting: no traffic yet

    result, ready = join(aws, tmp_path)
    result.check()
    # The stand-in was asked to ready exactly the new host, on the release the hosts in service run.
    assert f"--limit={new}" in ready["args"]
    assert json.loads(ready["args"][-1].removeprefix("--extra-vars=")) == {"site_fleet_release": {"demo": "v7"}}
    # While it readied the host, the join held the deploy lock: a deploy was refused, told who holds it.
    assert ready["deploy_refused"] and f"join {new}" in ready["deploy_output"]
    # Registered only after it was ready, and put in service after that, with the hook's name and the instance.
    (registered,) = registrations(aws, new)
    ((continued, outcome),) = lifecycle_actions(aws, new)
    assert ready["ended"] < registered < continued and outcome == "CONTINUE"
    assert new in instances("InService") and new in in_target_group() and set(serving) <= in_target_group()
    assert lock_holder() == {}  # given back
    audit = boto3.client("dynamodb", region_name=REGION).scan(TableName="fleetdeploy-locks")["Items"]
    joined = [json.loads(i["body"]["S"]) for i in audit if "body" in i and f'"{new}"' in i["body"]["S"]]
    assert [(r["action"], r["result"], r["hosts"]) for r in joined] == [("join", "ok", {new: "joined"})]


def test_a_failed_readiness_abandons_the_instance_and_says_why(aws: MotoEndpoint, tmp_path: Path) -> None:
    new = scale_out()
    result, ready = join(aws, tmp_path, exit_code=2, instance_id=new)
    assert result.returncode != 0 and ready
    assert f"Abandoned {new}" in result.output and "nginx would not start" in result.output
    assert [outcome for _, outcome in lifecycle_actions(aws, new)] == ["ABANDON"]
    assert registrations(aws, new) == [] and new not in in_target_group()
    assert new not in instances("Pending:Wait") + instances("InService")  # terminated, a replacement waits
    assert lock_holder() == {}


def test_a_deploy_holding_the_lock_leaves_the_instance_waiting_untouched(aws: MotoEndpoint, tmp_path: Path) -> None:
    new = scale_out()
    lock = {"name": "staging", "run_id": "deploy-v8", "holder": "alice", "action": "deploy v8",
            "backend": "dynamodb", "table": "fleetdeploy-locks", "region": REGION}
    run([str(VENV_BIN / "ansible"), "localhost", "-m", "fleetdeploy_lock", "-a", json.dumps(lock)], **aws.env()).check()
    try:
        result, ready = join(aws, tmp_path)
        assert result.returncode != 0 and "alice" in result.output and "deploy v8" in result.output
        assert ready == {} and lifecycle_actions(aws, new) == [] and new in instances("Pending:Wait")
    finally:
        run([str(VENV_BIN / "ansible"), "localhost", "-m", "fleetdeploy_lock", "-a",
             json.dumps({**lock, "state": "released"})], **aws.env()).check()
    # Once the deploy is over, the next run joins it.
    join(aws, tmp_path)[0].check()
    assert new in instances("InService")


def test_an_instance_not_waiting_in_the_hook_is_refused_and_nothing_completed(
        aws: MotoEndpoint, tmp_path: Path) -> None:
    serving = instances("InService")[0]
    completed = len(aws.recorder.actions("CompleteLifecycleAction"))
    result, ready = join(aws, tmp_path, instance_id=serving)
    assert result.returncode != 0 and f"{serving} is not in Pending:Wait" in result.output
    assert ready == {} and len(aws.recorder.actions("CompleteLifecycleAction")) == completed
