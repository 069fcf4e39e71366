"""moto in server mode on 127.0.0.1: a real HTTP endpoint that boto3, the aws_ec2 inventory and the
amazon.aws/community.aws modules reach through AWS_ENDPOINT_URL. Every call is recorded with its time,
so tests can check the order in which a deploy talked to the load balancer."""

from __future__ import annotations

import io
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from typing import Any

from moto.autoscaling.exceptions import ValidationError
from moto.autoscaling.models import AutoScalingBackend, FakeAutoScalingGroup
from moto.autoscaling.responses import AutoScalingResponse
from moto.core.responses import EmptyResult
from moto.cloudfront.models import DefaultCacheBehaviour, Origin
from moto.dynamodb.models.table import Table
from moto.ecs.models import EC2ContainerServiceBackend
from moto.elasticache.models import CacheCluster, ElastiCacheBackend
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import make_server


# moto 5.2.5 answers a few calls unlike AWS where playbooks/aws needs them (docs/aws.md, "Tests and what
# moto could not check"); each correction below makes moto answer as AWS does, nothing more.


def _describe_with_table_id(describe: Any) -> Any:
    """DescribeTable without TableId, which AWS always returns and community.aws.dynamodb_table reads:
    a stable one per table."""

    def wrapped(self: Table, base_key: str = "TableDescription") -> dict[str, Any]:
        result: dict[str, Any] = describe(self, base_key)
        result[base_key].setdefault("TableId", str(uuid.uuid5(uuid.NAMESPACE_URL, self.table_arn)))
        return result

    return wrapped


def _cache_nodes(self: CacheCluster) -> list[dict[str, Any]]:
    """DescribeCacheClusters without cache nodes, which AWS returns with ShowCacheNodeInfo and
    community.aws.elasticache reads (the port) on every run after the first: one node per node of the
    cluster, with the cluster's own port and an address of AWS's form."""
    return [{"CacheNodeId": f"{n:04d}", "CacheNodeStatus": "available",
             "Endpoint": {"Address": f"{self.cache_cluster_id}.moto.{n:04d}.cache.amazonaws.com", "Port": self.port}}
            for n in range(1, int(self.num_cache_nodes) + 1)]


def _cache_security_groups(self: CacheCluster) -> list[dict[str, str]]:
    """...nor its VPC security groups, which AWS lists and the module compares."""
    return [{"SecurityGroupId": group, "Status": "active"} for group in self.security_group_ids]


def _delete_and_forget(delete: Any) -> Any:
    """A deleted cache cluster stays "deleting" for ever, so community.aws.elasticache's wait (which has no
    timeout) never ends; AWS forgets it once the deletion ends: here at once."""

    def wrapped(self: ElastiCacheBackend, cache_cluster_id: str) -> CacheCluster:
        cluster: CacheCluster = delete(self, cache_cluster_id)
        self.cache_clusters.pop(cache_cluster_id, None)
        return cluster

    return wrapped


# Launch lifecycle hooks: moto stores them but puts every new instance InService at once and registers it
# in the group's target groups. AWS holds an instance of a group with an EC2_INSTANCE_LAUNCHING hook in
# Pending:Wait, out of the target groups, until CompleteLifecycleAction (which moto lacks) says CONTINUE
# (InService, registered) or ABANDON (terminated, and replaced by a new instance). Heartbeat timeouts are
# not modelled.
LAUNCHING = "autoscaling:EC2_INSTANCE_LAUNCHING"


def _launch_hook(group: FakeAutoScalingGroup) -> Any:
    hooks = group.autoscaling_backend.describe_lifecycle_hooks(group.name)
    return next((hook for hook in hooks if hook.lifecycle_transition == LAUNCHING), None)


def _hold_new_instances(launch: Any) -> Any:
    def wrapped(self: FakeAutoScalingGroup, count_needed: int, propagated_tags: dict[str, str]) -> None:
        known = {state.instance.id for state in self.instance_states}
        launch(self, count_needed, propagated_tags)
        if _launch_hook(self) is not None:
            for state in self.instance_states:
                if state.instance.id not in known:
                    state.lifecycle_state = "Pending:Wait"

    return wrapped


def _tags_even_when_none(list_tags: Any) -> Any:
    """ECS ListTagsForResource of a resource created without tags (a cluster from community.aws.ecs_cluster)
    answers no tags list, where AWS answers an empty one; community.aws.ecs_tag reads it."""

    def wrapped(self: EC2ContainerServiceBackend, resource_arn: str) -> list[dict[str, str]]:
        return list_tags(self, resource_arn) or []

    return wrapped


def _register_in_service(self: AutoScalingBackend, group_name: str) -> None:
    """moto's update_attached_target_groups, for the instances InService only."""
    group = self.autoscaling_groups[group_name]
    ids = [s.instance.id for s in group.instance_states if not s.lifecycle_state.startswith("Pending")]
    if not group.target_group_arns or not ids:
        return
    for target_group in self.elbv2_backend.describe_target_groups(
            target_group_arns=group.target_group_arns, load_balancer_arn=None, names=None):
        self.elbv2_backend.register_targets(target_group.arn, [{"Id": i, "Port": target_group.port} for i in ids])


def _complete_lifecycle_action(self: AutoScalingResponse) -> EmptyResult:
    backend = self.autoscaling_backend
    group = backend.autoscaling_groups.get(self._get_param("AutoScalingGroupName"))
    hook_name, result = self._get_param("LifecycleHookName"), self._get_param("LifecycleActionResult")
    hook = _launch_hook(group) if group else None
    if hook is None or hook.name != hook_name:
        raise ValidationError(f"No active Lifecycle Action found with name {hook_name}")
    instance_id = self._get_param("InstanceId")
    state = next((s for s in group.instance_states
                  if s.instance.id == instance_id and s.lifecycle_state == "Pending:Wait"), None)
    if state is None or result not in ("CONTINUE", "ABANDON"):
        raise ValidationError(f"No active Lifecycle Action found with instance ID {instance_id}")
    if result == "CONTINUE":
        state.lifecycle_state = "InService"
        backend.update_attached_target_groups(group.name)
    else:
        group.instance_states.remove(state)
        backend.ec2_backend.terminate_instances([instance_id])
        group.set_desired_capacity(group.desired_capacity)  # its replacement, waiting in the hook in turn
    return EmptyResult()


def _origin_as_given(init: Any) -> Any:
    """A CloudFront origin keeps its origin access control and its S3 origin config, which moto drops and
    community.aws.cloudfront_distribution compares: without them every run updated the distribution."""

    def wrapped(self: Origin, origin: dict[str, Any]) -> None:
        init(self, origin)
        self.origin_access_control_id = origin.get("OriginAccessControlId", "")
        if "S3OriginConfig" in origin:
            self.s3_origin_config = origin["S3OriginConfig"]

    return wrapped


def _cache_policy_alone(init: Any) -> Any:
    """A cache behaviour with a cache policy has no legacy ForwardedValues or TTLs in AWS's answer, and no
    Items in an empty list of trusted signers or key groups; moto adds them, and the module then saw a change
    on every run."""

    def wrapped(self: DefaultCacheBehaviour, config: dict[str, Any]) -> None:
        init(self, config)
        if self.cache_policy_id:
            self.forwarded_values = self.min_ttl = self.default_ttl = self.max_ttl = None
        for signers in (self.trusted_signers, self.trusted_key_groups):
            signers.items = signers.items or None

    return wrapped


def _answer_as_aws_does() -> None:
    if hasattr(CacheCluster, "cache_nodes"):  # done already in this process
        return
    setattr(Table, "describe", _describe_with_table_id(Table.describe))
    setattr(CacheCluster, "cache_nodes", property(_cache_nodes))
    setattr(CacheCluster, "cache_security_groups", property(lambda self: []))  # none in a VPC
    setattr(CacheCluster, "security_groups", property(_cache_security_groups))
    setattr(FakeAutoScalingGroup, "replace_autoscaling_group_instances",
            _hold_new_instances(FakeAutoScalingGroup.replace_autoscaling_group_instances))
    # Pending instances count towards the desired capacity, as in AWS (moto counts InService only).
    setattr(FakeAutoScalingGroup, "active_instances",
            lambda self: [s for s in self.instance_states if s.lifecycle_state in ("InService", "Pending:Wait")])
    setattr(AutoScalingBackend, "update_attached_target_groups", _register_in_service)
    setattr(AutoScalingResponse, "complete_lifecycle_action", _complete_lifecycle_action)
    setattr(ElastiCacheBackend, "delete_cache_cluster", _delete_and_forget(ElastiCacheBackend.delete_cache_cluster))
    setattr(Origin, "__init__", _origin_as_given(Origin.__init__))
    setattr(DefaultCacheBehaviour, "__init__", _cache_policy_alone(DefaultCacheBehaviour.__init__))
    setattr(EC2ContainerServiceBackend, "list_tags_for_resource",
            _tags_even_when_none(EC2ContainerServiceBackend.list_tags_for_resource))


_answer_as_aws_does()


@dataclass
class Call:
    time: float
    action: str
    params: dict[str, list[str]]
    body: bytes = b""  # as sent: the JSON of the JSON protocols (ECS, SSM, ...), which params cannot hold


@dataclass
class Recorder:
    calls: list[Call] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def actions(self, *names: str) -> list[Call]:
        with self.lock:
            return [c for c in self.calls if not names or c.action in names]


class RecordingApp:
    def __init__(self, app: Any, recorder: Recorder) -> None:
        self.app, self.recorder = app, recorder

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        params = urllib.parse.parse_qs(body.decode(errors="replace")) if body else {}
        params.update(urllib.parse.parse_qs(environ.get("QUERY_STRING", "")))
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        action = (params.get("Action") or [target.rsplit(".", 1)[-1] if target else environ.get("PATH_INFO", "")])[0]
        with self.recorder.lock:
            self.recorder.calls.append(Call(time.time(), action, params, body))
        return self.app(environ, start_response)


class MotoEndpoint:
    def __init__(self) -> None:
        self.recorder = Recorder()
        app = RecordingApp(DomainDispatcherApplication(create_backend_app), self.recorder)
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "MotoEndpoint":
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.shutdown()

    def reset(self) -> None:
        """Forget every resource: moto's state is the process's, shared by every endpoint a test starts."""
        import urllib.request

        urllib.request.urlopen(urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")).read()

    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "eu-west-1",
            "AWS_REGION": "eu-west-1",
        }
