#!/usr/bin/python
"""Ansible module: the ECR digest of each image:tag of a release, failing on any that ECR does not have."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: fleetdeploy_ecr_images
short_description: Find the digests of a release's images in ECR, and fail when one is missing
description:
  - For each O(images) entry (C(name:tag)), asks ECR (DescribeImages) for the image with that tag in the
    repository C(<prefix>/name) of the account that O(registry) names, and returns the digests.
  - Fails, naming every missing image, when a repository or a tag is not there, so an ECS deploy stops
    before it registers anything rather than when its tasks cannot pull.
  - Reads only; never changes anything.
options:
  registry:
    description:
      - The registry as the images are named, C(<account>.dkr.ecr.<region>.amazonaws.com), optionally
        followed by a path prefix of the repositories (C(.../team)).
    required: true
    type: str
  images:
    description: The images, each C(name:tag).
    required: true
    type: list
    elements: str
author: fleetdeploy
"""

EXAMPLES = r"""
- name: Find the release's images in ECR
  fleetdeploy_ecr_images:
    registry: 123456789012.dkr.ecr.eu-west-1.amazonaws.com
    images: [web:v42, tracking:v42]
"""

RETURN = r"""
digests:
  description: "{name:tag: digest} of every image found."
  returned: always
  type: dict
missing:
  description: The images ECR does not have.
  returned: always
  type: list
"""

import re
from typing import Any

from ansible.module_utils.basic import AnsibleModule

try:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError
except ImportError:  # reported by main()
    boto3 = None

ECR = re.compile(r"^(?P<account>[0-9]{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:/(?P<prefix>.+))?$")
ABSENT = ("ImageNotFoundException", "RepositoryNotFoundException")


def find(ecr: Any, account: str, prefix: str, images: list[str]) -> tuple[dict[str, str], list[str]]:
    digests, missing = {}, []
    for image in images:
        name, _, tag = image.rpartition(":")
        try:
            found = ecr.describe_images(registryId=account, repositoryName=f"{prefix}/{name}" if prefix else name,
                                        imageIds=[{"imageTag": tag}])["imageDetails"]
        except ClientError as error:
            if error.response["Error"]["Code"] not in ABSENT:
                raise
            found = []
        if found:
            digests[image] = found[0]["imageDigest"]
        else:
            missing.append(image)
    return digests, missing


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "registry": {"type": "str", "required": True},
            "images": {"type": "list", "elements": "str", "required": True},
        },
        supports_check_mode=True,
    )
    if boto3 is None:
        module.fail_json(msg="fleetdeploy_ecr_images needs boto3 on the controller")
    registry, images = module.params["registry"], module.params["images"]
    named = ECR.match(registry)
    if not named:
        module.fail_json(msg=f"ECS pulls the release's images from ECR: fleetdeploy_registry must be "
                             f"<account>.dkr.ecr.<region>.amazonaws.com, not {registry}. Nothing was changed.")
    bad = [image for image in images if not re.fullmatch(r"[^:\s]+:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", image)]
    if bad:
        module.fail_json(msg=f"Not name:tag: {', '.join(bad)}")
    try:
        digests, missing = find(boto3.client("ecr", region_name=named["region"]), named["account"],
                                named["prefix"] or "", images)
    except (BotoCoreError, ClientError) as error:
        module.fail_json(msg=f"Asking ECR ({registry}) for the release's images failed: {error}")
    if missing:
        module.fail_json(msg=f"ECR ({registry}) has no {', '.join(missing)}: build and push it, or promote it, "
                             f"first. Nothing was changed.", digests=digests, missing=missing)
    module.exit_json(changed=False, digests=digests, missing=missing)


if __name__ == "__main__":
    main()
