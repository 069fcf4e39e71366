#!/usr/bin/python
"""Ansible module: which of an environment's named AWS resources exist, and are they ours (by tag)?"""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: fleetdeploy_aws_owner
short_description: Check that an environment's AWS names are free or ours, and tag what other modules cannot
description:
  - The infrastructure playbook (C(playbooks/aws/infra.yml)) creates its resources under fixed names and
    marks each with an ownership tag. It must never adopt, change or delete a resource it did not create.
  - V(checked) first checks the credentials (STS) and the region (the account can use it, and every zone
    of O(zones) is in it), each with an error that says what to fix. Then it looks up every resource of
    O(resources) by its name and fails, naming each one, when a name is taken by a resource that does not
    carry O(tags) (created by someone else, or by another environment). It returns every resource's state.
  - With O(refuse_taken=false) (teardown) a taken name is not an error: its resource is reported V(taken)
    and left alone.
  - V(tagged) adds O(tags) to resources the collections' modules create without tags (ElastiCache clusters
    and subnet groups, ECR repositories). Use it right after the task that created them, behind a V(checked)
    that ran before it: it does not check ownership itself.
options:
  state:
    description: V(checked) only reads; V(tagged) adds the tags where they are missing.
    choices: [checked, tagged]
    default: checked
    type: str
  region:
    description: The AWS region.
    required: true
    type: str
  zones:
    description: Availability zones that must exist in O(region).
    type: list
    elements: str
    default: []
  tags:
    description: The ownership tags; a resource is ours when it carries all of them.
    required: true
    type: dict
  refuse_taken:
    description: With V(checked), fail when a name is taken by a resource without O(tags).
    type: bool
    default: true
  resources:
    description:
      - The named resources, each C({type, name}). Types are C(vpc) (by its Name tag), C(alb),
        C(target_group), C(launch_template), C(autoscaling_group), C(rds_instance), C(rds_subnet_group),
        C(elasticache_cluster), C(elasticache_subnet_group), C(s3_bucket), C(dynamodb_table), C(ecr_repository).
    type: list
    elements: dict
    default: []
author: fleetdeploy
"""

EXAMPLES = r"""
- name: Refuse to go on when a name the environment needs is taken by something it did not create
  fleetdeploy_aws_owner:
    region: eu-west-1
    zones: [eu-west-1a, eu-west-1b]
    tags: {fleetdeploy_infra: staging}
    resources:
      - {type: alb, name: fleetdeploy-staging}
      - {type: s3_bucket, name: example-staging-uploads}
"""

RETURN = r"""
account:
  description: The AWS account the credentials belong to.
  returned: always
  type: str
ours:
  description: The resources that carry O(tags), by type, then name, to their C(arn) (an id for a VPC or a
    launch template); every type is present, empty when none is ours.
  returned: always
  type: dict
  sample: {"alb": {"fleetdeploy-staging": "arn:aws:elasticloadbalancing:..."}, "vpc": {"fleetdeploy-staging": "vpc-0a1b"}}
resources:
  description: Each resource of O(resources) with C(state) (V(absent), V(ours) or V(taken)), and when it
    exists its C(arn) (an id for a VPC or a launch template) and C(tags).
  returned: always
  type: list
  elements: dict
"""

from typing import Any, Callable

from ansible.module_utils.basic import AnsibleModule

try:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError
except ImportError:  # reported by main()
    boto3 = None

Tags = dict[str, str]
# (arn or None when absent, the resource's tags)
Found = tuple[str | None, Tags]


def _pairs(tags: list[dict[str, str]] | None, key: str = "Key", value: str = "Value") -> Tags:
    return {tag[key]: tag[value] for tag in tags or []}


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _unless_missing(missing: str, call: Callable[..., Any], **params: Any) -> Any:
    """call(**params)'s answer, or None when AWS answers with the error code `missing` (no such resource)."""
    try:
        return call(**params)
    except ClientError as error:
        if _code(error) == missing:
            return None
        raise


class Finder:
    """Looks one named resource up, per type; each lookup answers (arn, tags) or (None, {})."""

    def __init__(self, region: str) -> None:
        self.region = region
        self.clients: dict[str, Any] = {}

    def client(self, service: str) -> Any:
        if service not in self.clients:
            self.clients[service] = boto3.client(service, region_name=self.region)
        return self.clients[service]

    def find(self, kind: str, name: str) -> Found:
        lookup: Callable[[str], Found] = getattr(self, f"_{kind}")
        return lookup(name)

    def _vpc(self, name: str) -> Found:
        vpcs = self.client("ec2").describe_vpcs(Filters=[{"Name": "tag:Name", "Values": [name]}])["Vpcs"]
        if not vpcs:
            return None, {}
        # Two VPCs of one name: any of them not ours makes the name taken.
        found = [(vpc["VpcId"], _pairs(vpc.get("Tags"))) for vpc in vpcs]
        return min(found, key=lambda item: len(item[1]))

    def _alb(self, name: str) -> Found:
        elb = self.client("elbv2")
        found = _unless_missing("LoadBalancerNotFound", elb.describe_load_balancers, Names=[name])
        if found is None:
            return None, {}
        arn = found["LoadBalancers"][0]["LoadBalancerArn"]
        return arn, _pairs(elb.describe_tags(ResourceArns=[arn])["TagDescriptions"][0]["Tags"])

    def _target_group(self, name: str) -> Found:
        elb = self.client("elbv2")
        found = _unless_missing("TargetGroupNotFound", elb.describe_target_groups, Names=[name])
        if found is None:
            return None, {}
        arn = found["TargetGroups"][0]["TargetGroupArn"]
        return arn, _pairs(elb.describe_tags(ResourceArns=[arn])["TagDescriptions"][0]["Tags"])

    def _launch_template(self, name: str) -> Found:
        try:
            found = self.client("ec2").describe_launch_templates(LaunchTemplateNames=[name])["LaunchTemplates"]
        except ClientError as error:
            if "NotFound" in _code(error):
                return None, {}
            raise
        if not found:
            return None, {}
        # The tags as EC2 keeps them (moto's template description shows only those given at its creation).
        template = found[0]["LaunchTemplateId"]
        tags = self.client("ec2").describe_tags(Filters=[{"Name": "resource-id", "Values": [template]}])["Tags"]
        return template, _pairs(tags)

    def _autoscaling_group(self, name: str) -> Found:
        groups = self.client("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=[name])[
            "AutoScalingGroups"]
        return (groups[0]["AutoScalingGroupARN"], _pairs(groups[0].get("Tags"))) if groups else (None, {})

    def _rds_instance(self, name: str) -> Found:
        found = _unless_missing("DBInstanceNotFound", self.client("rds").describe_db_instances,
                                DBInstanceIdentifier=name)
        if found is None:
            return None, {}
        db = found["DBInstances"][0]
        return db["DBInstanceArn"], _pairs(db.get("TagList"))

    def _rds_subnet_group(self, name: str) -> Found:
        rds = self.client("rds")
        found = _unless_missing("DBSubnetGroupNotFoundFault", rds.describe_db_subnet_groups, DBSubnetGroupName=name)
        if found is None:
            return None, {}
        arn = found["DBSubnetGroups"][0]["DBSubnetGroupArn"]
        return arn, _pairs(rds.list_tags_for_resource(ResourceName=arn)["TagList"])

    def _elasticache_cluster(self, name: str) -> Found:
        cache = self.client("elasticache")
        found = _unless_missing("CacheClusterNotFound", cache.describe_cache_clusters, CacheClusterId=name)
        if found is None:
            return None, {}
        arn = found["CacheClusters"][0]["ARN"]
        return arn, _pairs(cache.list_tags_for_resource(ResourceName=arn)["TagList"])

    def _elasticache_subnet_group(self, name: str) -> Found:
        cache = self.client("elasticache")
        found = _unless_missing("CacheSubnetGroupNotFoundFault", cache.describe_cache_subnet_groups,
                                CacheSubnetGroupName=name)
        if found is None:
            return None, {}
        arn = found["CacheSubnetGroups"][0]["ARN"]
        return arn, _pairs(cache.list_tags_for_resource(ResourceName=arn)["TagList"])

    def _ecs_cluster(self, name: str) -> Found:
        found = self.client("ecs").describe_clusters(clusters=[name], include=["TAGS"])["clusters"]
        active = [c for c in found if c.get("status") == "ACTIVE"]
        if not active:
            return None, {}
        return active[0]["clusterArn"], _pairs(active[0].get("tags"), "key", "value")

    def _s3_bucket(self, name: str) -> Found:
        s3 = self.client("s3")
        try:
            s3.head_bucket(Bucket=name)
        except ClientError as error:
            if _code(error) in ("404", "NoSuchBucket"):
                return None, {}
            if _code(error) == "403":  # another account's bucket: taken, and not ours
                return f"arn:aws:s3:::{name}", {}
            raise
        try:
            tags = _pairs(s3.get_bucket_tagging(Bucket=name)["TagSet"])
        except ClientError as error:
            if _code(error) != "NoSuchTagSet":
                raise
            tags = {}
        return f"arn:aws:s3:::{name}", tags

    def _dynamodb_table(self, name: str) -> Found:
        dynamodb = self.client("dynamodb")
        found = _unless_missing("ResourceNotFoundException", dynamodb.describe_table, TableName=name)
        if found is None:
            return None, {}
        arn = found["Table"]["TableArn"]
        return arn, _pairs(dynamodb.list_tags_of_resource(ResourceArn=arn).get("Tags"))

    def _ecr_repository(self, name: str) -> Found:
        ecr = self.client("ecr")
        found = _unless_missing("RepositoryNotFoundException", ecr.describe_repositories, repositoryNames=[name])
        if found is None:
            return None, {}
        arn = found["repositories"][0]["repositoryArn"]
        return arn, _pairs(ecr.list_tags_for_resource(resourceArn=arn).get("tags"))

    def tag(self, kind: str, arn: str, tags: Tags) -> None:
        """Tags for the types whose modules take none."""
        pairs = [{"Key": key, "Value": value} for key, value in tags.items()]
        if kind in ("elasticache_cluster", "elasticache_subnet_group"):
            self.client("elasticache").add_tags_to_resource(ResourceName=arn, Tags=pairs)
        elif kind == "ecr_repository":
            self.client("ecr").tag_resource(resourceArn=arn, tags=pairs)
        else:
            raise ValueError(f"{kind} is tagged by its own module, not here")


TYPES = [name[1:] for name in vars(Finder) if name.startswith("_") and not name.startswith("__")]


def check_account(module: AnsibleModule, finder: Finder) -> str:
    """The account of the credentials, or a failure that says what is missing."""
    region, zones = module.params["region"], module.params["zones"]
    known = boto3.session.Session().get_available_regions("ec2")  # botocore's own list: no call, no credentials
    if region not in known:
        module.fail_json(msg=f"Region {region!r} is not one this account can use: it is no AWS region "
                             f"({', '.join(sorted(known))}). Check aws_region in the inventory's group_vars/all/aws.yml.")
    try:
        account = str(finder.client("sts").get_caller_identity()["Account"])
    except NoCredentialsError:
        module.fail_json(msg="No AWS credentials: set AWS_PROFILE (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY), "
                             "or run where an instance profile or SSO session provides them.")
    except NoRegionError:
        module.fail_json(msg="No AWS region: set aws_region in the inventory's group_vars/all/aws.yml.")
    except (BotoCoreError, ClientError) as error:
        module.fail_json(msg=f"The AWS credentials were refused in region {region}: {error}")
    ec2 = finder.client("ec2")
    try:
        regions = sorted(r["RegionName"] for r in ec2.describe_regions()["Regions"])
    except (BotoCoreError, ClientError) as error:
        module.fail_json(msg=f"Region {region!r} does not answer: {error}. Is aws_region a region's name "
                             "(e.g. eu-west-1)?")
    if region not in regions:
        module.fail_json(msg=f"Region {region!r} is not one this account can use; it can use {', '.join(regions)}. "
                             "Check aws_region in the inventory's group_vars/all/aws.yml.")
    available = sorted(zone["ZoneName"] for zone in ec2.describe_availability_zones()["AvailabilityZones"])
    missing = [zone for zone in zones if zone not in available]
    if missing:
        module.fail_json(msg=f"Availability zones {', '.join(missing)} are not in region {region} (it has "
                             f"{', '.join(available)}): aws_availability_zones and aws_region disagree.")
    return account


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "state": {"type": "str", "default": "checked", "choices": ["checked", "tagged"]},
            "region": {"type": "str", "required": True},
            "zones": {"type": "list", "elements": "str", "default": []},
            "tags": {"type": "dict", "required": True},
            "resources": {"type": "list", "elements": "dict", "default": []},
            "refuse_taken": {"type": "bool", "default": True},
        },
        supports_check_mode=True,
    )
    if boto3 is None:
        module.fail_json(msg="fleetdeploy_aws_owner needs boto3 on the controller")
    tags = {str(key): str(value) for key, value in module.params["tags"].items()}
    if not tags:
        module.fail_json(msg="tags must name at least one ownership tag")
    for resource in module.params["resources"]:
        if resource.get("type") not in TYPES or not resource.get("name"):
            module.fail_json(msg=f"Each resource needs a name and one of the types {', '.join(TYPES)}: {resource}")
    finder = Finder(module.params["region"])
    account = check_account(module, finder)

    results, taken = [], []
    try:
        for resource in module.params["resources"]:
            arn, found_tags = finder.find(resource["type"], resource["name"])
            ours = arn is not None and all(found_tags.get(key) == value for key, value in tags.items())
            if arn is not None and not ours:
                taken.append(f"{resource['type']} {resource['name']!r} ({arn}, tags {found_tags or 'none'})")
            state = "absent" if arn is None else "ours" if ours else "taken"
            results.append({**resource, "state": state, "arn": arn, "tags": found_tags})
    except (BotoCoreError, ClientError) as error:
        module.fail_json(msg=f"Looking up the environment's resources failed: {error}")
    # V(tagged) runs right after the modules created these, untagged: only V(checked) guards ownership.
    if taken and module.params["state"] == "checked" and module.params["refuse_taken"]:
        module.fail_json(
            msg="Names this environment needs are taken by resources it did not create (they lack the tags "
                f"{tags}); this playbook never adopts, changes or deletes them. Rename or remove them, or "
                f"choose other names: {'; '.join(taken)}",
            resources=results, account=account)

    changed = False
    if module.params["state"] == "tagged":
        for result in results:
            if result["state"] != "absent" and any(result["tags"].get(key) != value for key, value in tags.items()):
                changed = True
                if not module.check_mode:
                    finder.tag(result["type"], result["arn"], tags)
    ours: dict[str, dict[str, str]] = {kind: {} for kind in TYPES}
    for result in results:
        if result["state"] == "ours":
            ours[result["type"]][result["name"]] = result["arn"]
    module.exit_json(changed=changed, account=account, resources=results, ours=ours)


if __name__ == "__main__":
    main()
