#!/usr/bin/python
"""Ansible module: a CloudFront origin access control for an S3 origin, found by its name."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: fleetdeploy_cloudfront_oac
short_description: Create or delete a CloudFront origin access control (OAC) for S3, by name
description:
  - A distribution reads a private bucket through an origin access control, which signs its requests
    (SigV4, always) so the bucket's policy can admit that one distribution and nobody else.
  - The collections have a module for the older origin access identity only
    (C(community.aws.cloudfront_origin_access_identity)); AWS recommends OAC for new distributions.
  - Names are unique per account, so the name identifies the control; V(present) leaves an existing one
    as it is.
options:
  name:
    description: The control's name.
    required: true
    type: str
  description:
    description: What it is for.
    default: ""
    type: str
  state:
    description: Whether the control exists.
    choices: [present, absent]
    default: present
    type: str
author: fleetdeploy
"""

EXAMPLES = r"""
- name: Let the distribution read the static bucket
  fleetdeploy_cloudfront_oac:
    name: fleetdeploy-staging-static
    description: the static files' bucket
  register: oac
"""

RETURN = r"""
id:
  description: The control's id, for a distribution origin's OriginAccessControlId.
  returned: when O(state=present)
  type: str
"""

from typing import Any

from ansible.module_utils.basic import AnsibleModule

try:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError
except ImportError:  # reported by main()
    boto3 = None


def find(cloudfront: Any, name: str) -> dict[str, Any] | None:
    for page in cloudfront.get_paginator("list_origin_access_controls").paginate():
        for item in page.get("OriginAccessControlList", {}).get("Items", []) or []:
            if item["Name"] == name:
                return dict(item)
    return None


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "description": {"type": "str", "default": ""},
            "state": {"type": "str", "default": "present", "choices": ["present", "absent"]},
        },
        supports_check_mode=True,
    )
    if boto3 is None:
        module.fail_json(msg="fleetdeploy_cloudfront_oac needs boto3 on the controller")
    # CloudFront is global; its API signs in us-east-1.
    cloudfront = boto3.client("cloudfront", region_name="us-east-1")
    name = module.params["name"]
    try:
        found = find(cloudfront, name)
        if module.params["state"] == "absent":
            if found and not module.check_mode:
                etag = cloudfront.get_origin_access_control(Id=found["Id"])["ETag"]
                cloudfront.delete_origin_access_control(Id=found["Id"], IfMatch=etag)
            module.exit_json(changed=found is not None)
        if found:
            module.exit_json(changed=False, id=found["Id"])
        if module.check_mode:
            module.exit_json(changed=True, id="")
        created = cloudfront.create_origin_access_control(OriginAccessControlConfig={
            "Name": name, "Description": module.params["description"], "SigningProtocol": "sigv4",
            "SigningBehavior": "always", "OriginAccessControlOriginType": "s3"})
        module.exit_json(changed=True, id=created["OriginAccessControl"]["Id"])
    except (BotoCoreError, ClientError) as error:
        module.fail_json(msg=f"The origin access control {name!r}: {error}")


if __name__ == "__main__":
    main()
