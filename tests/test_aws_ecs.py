"""deploy_target: ecs and the static files on S3 + CloudFront, against moto's server mode: infra.yml creates
the cluster, the log group, the services' target groups, the static bucket and its distribution; deploy.yml
registers task definitions and rolls the ECS services after the release tasks; rollback.yml returns to the
previous revision; teardown.yml removes it all. What moto cannot show is listed in docs/aws.md."""

from __future__ import annotations

import ast
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from moto.ecs.models import EC2ContainerServiceBackend, Task

from helpers import REPO, VENV_BIN, Run, playbook
from helpers import run as run_command
from moto_endpoint import MotoEndpoint
from test_aws_infra import MOTO_CANNOT_DELETE, REGION, everything_tagged, infra, infra_vars

SECRET = "canary-ecs-secret-9b2c"  # a service's secret: it must reach SSM, never a task definition or output
REGISTRY = f"123456789012.dkr.ecr.{REGION}.amazonaws.com"
MIGRATE = ["python3", "manage.py", "migrate", "--noinput"]
LOCK_TABLE = "fleetdeploy-locks"  # inventories/staging/group_vars/all/lock.yml

# The staging inventory's one service, and three more that only infra.yml sees, for the ALB's routing: `api`
# on /api/ of any host name and on every path of api.example.com, `admin` on /admin/ of ops.example.com
# alone, `wild` on every other name under example.com. The deploys below roll demo alone (every service in deploy_services needs a target group; a subset
# is enough).
DEMO = yaml.safe_load((REPO / "inventories/staging/group_vars/all/services.yml").read_text())["deploy_services"][0]
ROUTED = [DEMO,
          {**DEMO, "name": "api", "image": "api", "routes": [{"path": "/api/"}, {"path": "/", "hosts": ["api.example.com"]}]},
          {**DEMO, "name": "admin", "image": "admin", "routes": [{"path": "/admin/", "hosts": ["ops.example.com"]}]},
          {**DEMO, "name": "wild", "image": "wild", "routes": [{"path": "/", "hosts": ["*.example.com"]}]}]

# moto starts a one-off task and leaves it running for ever, with no exit code. Here a task "runs" its
# command override at once: it stops with the exit code this table gives its command (0 when absent).
EXIT_CODES: dict[str, int] = {}


def _run_to_the_end(run_task: Any) -> Any:
    def wrapped(self: EC2ContainerServiceBackend, *args: Any, **kwargs: Any) -> list[Task]:
        tasks: list[Task] = run_task(self, *args, **kwargs)
        for task in tasks:
            commands = [o.get("command") for o in task.overrides.get("containerOverrides", []) if o.get("command")]
            if commands:
                task.last_status, task.desired_status = "STOPPED", "STOPPED"
                task.stopped_reason = "Essential container in task exited"
                task.containers[0].exitCode = EXIT_CODES.get(" ".join(commands[0]), 0)
        return tasks

    return wrapped


@pytest.fixture(scope="module")
def environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MotoEndpoint, dict[str, Any]]]:
    """infra.yml with deploy_target: ecs, once for the module: (the endpoint, the variables a deploy gets)."""
    folder = tmp_path_factory.mktemp("ecs")
    with pytest.MonkeyPatch.context() as patch, MotoEndpoint() as endpoint:
        for key, value in endpoint.env().items():
            patch.setenv(key, value)
        patch.setattr(EC2ContainerServiceBackend, "run_task", _run_to_the_end(EC2ContainerServiceBackend.run_task))
        endpoint.reset()
        variables = {**infra_vars(folder), "deploy_target": "ecs", "deploy_services": ROUTED}
        infra(endpoint, "infra", variables).check()
        outputs = yaml.safe_load((folder / "aws_outputs.yml").read_text())["aws_outputs"]
        push_to_ecr("demo", [f"r{n}" for n in range(1, 10)])
        yield endpoint, {**variables, "aws_outputs": outputs}


def push_to_ecr(repository: str, tags: list[str]) -> None:
    """What the build's push leaves in the repository infra.yml made (aws_ecr_repositories): an image manifest
    per tag, each with its own digest."""
    ecr = boto3.client("ecr", region_name=REGION)
    for tag in tags:
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                    "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 2,
                               "digest": "sha256:" + hashlib.sha256(f"{repository}:{tag}".encode()).hexdigest()},
                    "layers": []}
        body = json.dumps(manifest)
        ecr.put_image(repositoryName=repository, imageManifest=body, imageTag=tag,
                      imageDigest="sha256:" + hashlib.sha256(body.encode()).hexdigest())


def ecr_digest(image: str) -> str:
    repository, tag = image.split(":")
    found: str = boto3.client("ecr", region_name=REGION).describe_images(
        repositoryName=repository, imageIds=[{"imageTag": tag}])["imageDetails"][0]["imageDigest"]
    return found


def deploy(endpoint: MotoEndpoint, variables: dict[str, Any], entry: str = "deploy.yml", **extra: object) -> Run:
    result = playbook(entry, "-i", "inventories/staging", extra_vars={
        **variables, "fleetdeploy_registry": REGISTRY, "vault_deploy_secrets": {"demo": {"DEMO_TOKEN": SECRET}},
        "deploy_ecs_steady_timeout": 0, "deploy_services": [DEMO],
        "deploy_release_tasks": [{"name": "migrate", "service": "demo", "command": MIGRATE}], **extra},
        **endpoint.env())
    assert SECRET not in result.output
    return result


def service() -> dict[str, Any]:
    ecs = boto3.client("ecs", region_name=REGION)
    found: dict[str, Any] = ecs.describe_services(cluster="fleetdeploy-staging", services=["demo"])["services"][0]
    return found


def definition(arn: str) -> dict[str, Any]:
    found: dict[str, Any] = boto3.client("ecs", region_name=REGION).describe_task_definition(
        taskDefinition=arn)["taskDefinition"]
    return found


def revisions() -> dict[str, str]:
    value = boto3.client("ssm", region_name=REGION).get_parameter(
        Name="/fleetdeploy/staging/ecs/revisions/demo")["Parameter"]["Value"]
    found: dict[str, str] = json.loads(value)
    return found


def audit_records() -> list[dict[str, Any]]:
    """The audit records the ECS runs left beside the deploy lock, oldest first."""
    items = boto3.client("dynamodb", region_name=REGION).scan(TableName=LOCK_TABLE)["Items"]
    records = [json.loads(item["body"]["S"]) for item in items if item["lock"]["S"].startswith("audit/staging/")]
    return sorted(records, key=lambda record: record["started"])


def held_lock() -> dict[str, Any] | None:
    found: dict[str, Any] | None = boto3.client("dynamodb", region_name=REGION).get_item(
        TableName=LOCK_TABLE, Key={"lock": {"S": "staging"}}, ConsistentRead=True).get("Item")
    return found


def assert_recorded(before: int, action: str, release: str, result: str, hosts: dict[str, str]) -> dict[str, Any]:
    """The run since `before` records left exactly one record, and gave the lock back."""
    new = audit_records()[before:]
    assert len(new) == 1, new
    record = new[0]
    assert (record["action"], record["release"], record["result"], record["hosts"], record["target"]) == (
        action, release, result, hosts, "ecs"), record
    assert record["environment"] == "staging" and record["run_id"] and record["started"] <= record["ended"], record
    assert held_lock() is None
    return record


def test_a_deploy_registers_the_release_runs_its_release_tasks_first_and_a_rollback_returns(
        environment: tuple[MotoEndpoint, dict[str, Any]]) -> None:
    endpoint, variables = environment
    outputs = variables["aws_outputs"]
    deploy(endpoint, variables, release="r1").check()
    first = service()["taskDefinition"]
    record = assert_recorded(0, "deploy", "r1", "ok", {"demo": "changed"})
    assert record["task_definitions"] == {"demo": first} and record["error"] == "", record
    assert record["images"] == {"demo:r1": ecr_digest("demo:r1")} and ecr_digest("demo:r1") != ecr_digest("demo:r2")
    container = definition(first)["containerDefinitions"][0]
    # By digest: a tag pushed again later does not change what this revision runs.
    assert container["image"] == f"{REGISTRY}/demo@{ecr_digest('demo:r1')}", container["image"]
    assert container["dockerLabels"] == {"org.fleetdeploy.image": f"{REGISTRY}/demo:r1"}
    assert {"name": "DEMO_MAX_BODY", "value": "1048576"} in container["environment"]
    assert container["secrets"] == [{"name": "DEMO_TOKEN", "valueFrom": (
        f"arn:aws:ssm:{REGION}:123456789012:parameter/fleetdeploy/staging/ecs/secrets/demo/DEMO_TOKEN")}]
    assert SECRET not in json.dumps(definition(first), default=str)
    parameter = boto3.client("ssm", region_name=REGION).get_parameter(
        Name="/fleetdeploy/staging/ecs/secrets/demo/DEMO_TOKEN", WithDecryption=True)["Parameter"]
    assert parameter["Type"] == "SecureString" and parameter["Value"] == SECRET
    assert container["logConfiguration"] == {"logDriver": "awslogs", "options": {
        "awslogs-group": outputs["ecs_log_group"], "awslogs-region": REGION, "awslogs-stream-prefix": "demo"}}
    assert boto3.client("logs", region_name=REGION).describe_log_groups(
        logGroupNamePrefix=outputs["ecs_log_group"])["logGroups"][0]["retentionInDays"] == 30
    running = service()
    # moto keeps no deployment configuration: what the deploy asked for, as sent.
    created = json.loads(endpoint.recorder.actions("CreateService")[-1].body)
    assert created["deploymentConfiguration"] == {"deploymentCircuitBreaker": {"enable": True, "rollback": True},
                                                  "maximumPercent": 200, "minimumHealthyPercent": 100}
    assert running["loadBalancers"] == [{"targetGroupArn": outputs["ecs_target_groups"]["demo"],
                                         "containerName": "demo", "containerPort": 8000}]
    assert running["launchType"] == "FARGATE" and running["desiredCount"] == 2

    endpoint.recorder.calls.clear()
    # A size of its own for demo from r2 on: the task definition and the service's count take it.
    deploy(endpoint, variables, release="r2",
           aws_ecs_service_sizes={"demo": {"cpu": "512", "memory": "2048", "desired_count": 3}}).check()
    second = service()["taskDefinition"]
    assert second != first and definition(second)["containerDefinitions"][0]["image"] == (
        f"{REGISTRY}/demo@{ecr_digest('demo:r2')}")
    assert (definition(second)["cpu"], definition(second)["memory"], service()["desiredCount"]) == ("512", "2048", 3)
    assert definition(second)["containerDefinitions"][0]["memory"] == 2048
    assert definition(second)["revision"] == definition(first)["revision"] + 1
    assert revisions() == {"current": second, "previous": first}
    # The migration ran from the new revision, and before the service was told about it.
    calls = endpoint.recorder.actions("RunTask", "UpdateService", "CreateService")
    assert [c.action for c in calls] == ["RunTask", "UpdateService"], calls
    ecs = boto3.client("ecs", region_name=REGION)
    migration = ecs.describe_tasks(cluster="fleetdeploy-staging", tasks=ecs.list_tasks(
        cluster="fleetdeploy-staging", desiredStatus="STOPPED")["taskArns"])["tasks"]
    assert {t["taskDefinitionArn"] for t in migration} == {first, second}
    assert all(t["overrides"]["containerOverrides"][0]["command"] == MIGRATE for t in migration)

    assert_recorded(1, "deploy", "r2", "ok", {"demo": "changed"})
    deploy(endpoint, variables, "rollback.yml").check()
    assert service()["taskDefinition"] == first
    assert revisions() == {"current": first, "previous": second}
    assert_recorded(2, "rollback", "previous", "ok", {"demo": "changed"})

    # A failing release task stops the deploy before any service changes.
    EXIT_CODES[" ".join(MIGRATE)] = 3
    try:
        endpoint.recorder.calls.clear()
        failed = deploy(endpoint, variables, release="r3")
    finally:
        EXIT_CODES.clear()
    assert failed.returncode != 0 and "The task exited 3" in failed.output
    assert "Deploy of r3 on ECS stopped" in failed.output, failed.output[-3000:]
    assert [c.action for c in endpoint.recorder.actions("RunTask", "UpdateService")] == ["RunTask"]
    assert service()["taskDefinition"] == first
    record = assert_recorded(3, "deploy", "r3", "failed", {"demo": "not reached"})
    assert "The task exited 3" in record["error"], record

    # Sizes Fargate cannot run, and a size for a service that does not exist, are refused before the lock
    # is taken or anything registered, naming the service.
    endpoint.recorder.calls.clear()
    for sizes, says in (({"demo": {"cpu": "256", "memory": "4096"}}, 'demo {"cpu": "256", "memory": "4096"'),
                        ({"demo": {"desired_count": 0}}, '"desired_count": 0'),
                        ({"demo": {"cpu": "300"}}, 'demo {"cpu": "300"'),
                        ({"dmeo": {"cpu": "512"}}, "aws_ecs_service_sizes names services deploy_services does not have: dmeo")):
        refused = deploy(endpoint, variables, release="r5", aws_ecs_service_sizes=sizes)
        assert refused.returncode != 0 and says in refused.output, (sizes, refused.output[-3000:])
    assert endpoint.recorder.actions("RegisterTaskDefinition", "RunTask", "UpdateService") == []
    assert len(audit_records()) == 4 and held_lock() is None

    # A release whose image ECR does not have (never pushed, or a typo) is refused the same way, naming it.
    refused = deploy(endpoint, variables, release="r10")
    assert refused.returncode != 0 and f"ECR ({REGISTRY}) has no demo:r10" in refused.output, refused.output[-3000:]
    assert endpoint.recorder.actions("RegisterTaskDefinition", "RunTask", "UpdateService") == []
    assert len(audit_records()) == 4 and held_lock() is None

    # Someone else's deploy holds the lock: refused at once, naming them, with nothing registered or rolled.
    taken = run_command([str(VENV_BIN / "ansible"), "localhost", "-m", "fleetdeploy_lock", "-a", json.dumps({
        "name": "staging", "run_id": "alice-run", "holder": "alice@laptop", "action": "deploy r7", "backend": "dynamodb",
        "table": LOCK_TABLE, "region": REGION})], **endpoint.env())
    assert taken.returncode == 0, taken.output[-2000:]
    try:
        endpoint.recorder.calls.clear()
        refused = deploy(endpoint, variables, release="r4")
        assert refused.returncode != 0 and "alice@laptop" in refused.output, refused.output[-3000:]
        assert endpoint.recorder.actions("RegisterTaskDefinition", "RunTask", "UpdateService") == []
        assert len(audit_records()) == 4 and held_lock()["run_id"]["S"] == "alice-run"
    finally:
        released = run_command([str(VENV_BIN / "ansible"), "localhost", "-m", "fleetdeploy_lock", "-a", json.dumps({
            "name": "staging", "run_id": "alice-run", "state": "released", "backend": "dynamodb",
            "table": LOCK_TABLE, "region": REGION})], **endpoint.env())
    assert released.returncode == 0 and held_lock() is None, released.output[-2000:]


def test_the_alb_routes_each_services_paths_and_host_names_as_nginx_does(
        environment: tuple[MotoEndpoint, dict[str, Any]]) -> None:
    """The HTTPS listener's default goes to the service on /; its rules, in priority order: each host name's
    own routes (longest prefix first) closed by a 404 for the rest when it has no / of its own, exact names
    before wildcards (as nginx picks a server block); then the prefixes of any host name (longest first)."""
    _, variables = environment
    groups = variables["aws_outputs"]["ecs_target_groups"]
    elb = boto3.client("elbv2", region_name=REGION)
    alb = elb.describe_load_balancers(Names=["fleetdeploy-staging"])["LoadBalancers"][0]
    https = next(listener for listener in elb.describe_listeners(LoadBalancerArn=alb["LoadBalancerArn"])["Listeners"]
                 if listener["Port"] == 443)
    assert [action["TargetGroupArn"] for action in https["DefaultActions"]] == [groups["demo"]], https["DefaultActions"]

    def shown(rule: dict[str, Any]) -> tuple[Any, ...]:
        conditions = {c["Field"]: c.get("Values") or next(iter(v["Values"] for k, v in c.items() if k.endswith("Config")))
                      for c in rule["Conditions"]}
        action = rule["Actions"][0]
        target = action.get("TargetGroupArn") or action["FixedResponseConfig"]["StatusCode"]
        return (int(rule["Priority"]), conditions.get("host-header"), conditions.get("path-pattern"), target)

    rules = sorted(shown(rule) for rule in elb.describe_rules(ListenerArn=https["ListenerArn"])["Rules"]
                   if not rule.get("IsDefault"))
    assert rules == [
        (1, ["api.example.com"], None, groups["api"]),
        (2, ["ops.example.com"], ["/admin/*"], groups["admin"]),
        (3, ["ops.example.com"], None, "404"),
        (4, ["*.example.com"], None, groups["wild"]),
        (5, None, ["/api/*"], groups["api"]),
    ], rules


def test_the_static_files_bucket_is_read_only_by_its_distribution_and_objects_carry_the_long_cache(
        environment: tuple[MotoEndpoint, dict[str, Any]]) -> None:
    _, variables = environment
    outputs = variables["aws_outputs"]
    bucket = "example-fleetdeploy-staging-static"
    cloudfront = boto3.client("cloudfront")
    distribution = cloudfront.get_distribution(Id=outputs["static_distribution_id"])["Distribution"]
    assert outputs["static_domain"] == distribution["DomainName"] and outputs["static_bucket"] == bucket
    config = distribution["DistributionConfig"]
    assert [o["DomainName"] for o in config["Origins"]["Items"]] == [f"{bucket}.s3.{REGION}.amazonaws.com"]
    assert config["DefaultCacheBehavior"]["ViewerProtocolPolicy"] == "redirect-to-https"
    controls = cloudfront.list_origin_access_controls()["OriginAccessControlList"]["Items"]
    assert [(c["Name"], c["SigningBehavior"], c["OriginAccessControlOriginType"]) for c in controls] == [
        ("fleetdeploy-staging-static", "always", "s3")]
    assert config["Origins"]["Items"][0]["OriginAccessControlId"] == controls[0]["Id"]
    assert config["DefaultCacheBehavior"]["CachePolicyId"] == "658327ea-f89d-4fab-a63d-7e88639e58f6"
    s3 = boto3.client("s3", region_name=REGION)
    assert all(s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"].values())
    statement = json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])["Statement"]
    assert [(s["Principal"], s["Action"], s["Condition"]) for s in statement] == [
        ({"Service": "cloudfront.amazonaws.com"}, "s3:GetObject",
         {"StringEquals": {"AWS:SourceArn": distribution["ARN"]}})]

    # collectstatic's upload, as django-storages makes it from services/web's settings (the web image
    # cannot be built here): the object parameters of the staticfiles storage on each put.
    parameters = static_object_parameters()
    s3.put_object(Bucket=bucket, Key="static/site.3f2a9c1b7d4e.css", Body=b"body{}", ContentType="text/css",
                  **parameters)
    head = s3.head_object(Bucket=bucket, Key="static/site.3f2a9c1b7d4e.css")
    assert head["CacheControl"] == "public, max-age=31536000, immutable"


def static_object_parameters() -> dict[str, str]:
    """The staticfiles storage's object_parameters, read from services/web/fdweb/settings.py."""
    tree = ast.parse((REPO / "services/web/fdweb/settings.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            keys = [k.value if isinstance(k, ast.Constant) else None for k in node.keys]
            if "object_parameters" in keys:
                found: dict[str, str] = ast.literal_eval(node.values[keys.index("object_parameters")])
                return found
    raise AssertionError("services/web's settings name no object_parameters")


def test_infra_changes_nothing_the_second_time_and_teardown_removes_the_ecs_and_static_side(
        environment: tuple[MotoEndpoint, dict[str, Any]], tmp_path: Path) -> None:
    endpoint, variables = environment
    deploy(endpoint, variables, release="r9").check()
    again = infra(endpoint, "infra", {k: v for k, v in variables.items() if k != "aws_outputs"}).check()
    assert again.changed() == 0, again.output[-6000:]
    assert "fleetdeploy-staging-demo" in str(everything_tagged_here())

    infra(endpoint, "teardown", {**variables, "aws_teardown_confirm": "staging"}).check()
    assert everything_tagged() == MOTO_CANNOT_DELETE
    assert everything_tagged_here() == []
    ecs = boto3.client("ecs", region_name=REGION)
    assert [c["status"] for c in ecs.describe_clusters(clusters=["fleetdeploy-staging"])["clusters"]] in ([], ["INACTIVE"])
    assert boto3.client("cloudfront").list_distributions()["DistributionList"].get("Items", []) == []


def everything_tagged_here() -> list[str]:
    """What the ECS and static side leave that carries the environment's tags (everything_tagged lists the rest)."""
    found = []
    ecs = boto3.client("ecs", region_name=REGION)
    for cluster in ecs.describe_clusters(clusters=["fleetdeploy-staging"], include=["TAGS"])["clusters"]:
        if cluster["status"] == "ACTIVE":
            found.append(cluster["clusterName"])
            found += [s for s in ecs.list_services(cluster=cluster["clusterName"])["serviceArns"]]
    logs = boto3.client("logs", region_name=REGION)
    found += [g["logGroupName"] for g in logs.describe_log_groups(logGroupNamePrefix="/fleetdeploy/staging")["logGroups"]]
    ssm = boto3.client("ssm", region_name=REGION)
    found += [p["Name"] for p in ssm.get_parameters_by_path(Path="/fleetdeploy/staging", Recursive=True)["Parameters"]]
    elb = boto3.client("elbv2", region_name=REGION)
    found += [g["TargetGroupName"] for g in elb.describe_target_groups()["TargetGroups"]]
    cloudfront = boto3.client("cloudfront")
    found += [d["Id"] for d in cloudfront.list_distributions()["DistributionList"].get("Items", [])]
    found += [c["Name"] for c in cloudfront.list_origin_access_controls()["OriginAccessControlList"].get("Items", [])]
    return found
