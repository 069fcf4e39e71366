#!/usr/bin/python
"""Ansible module: copy images by digest from one Docker registry to another (Registry HTTP API v2)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: fleetdeploy_image_copy
short_description: Copy images by digest from a source registry into a target registry
description:
  - Copies each image of O(images) from the O(source) registry into the O(target) registry, speaking the
    Docker Registry HTTP API v2 to both with basic auth, over HTTPS checked against each side's CA.
  - The manifest's bytes are copied unchanged, so the image has the same digest in both registries. Blobs
    (the config and the layers) are copied only when the target lacks them; then the manifest is put under
    its tag. Manifest lists and OCI indexes are copied with every image they list.
  - An image the target already has under its tag with the source's digest is left alone (C(changed=false)).
  - A tag the target already has with another digest is refused, since releases are immutable. Every image is
    checked before any is copied, so a refusal changes nothing in the target.
  - Blobs are streamed from one registry to the other without touching the disk of the host it runs on,
    which must reach both registries.
options:
  source:
    description: The registry the images come from.
    required: true
    type: dict
    suboptions: &registry
      registry:
        description: host:port of the registry (HTTPS).
        required: true
        type: str
      username:
        description: The account for basic auth; none sends no credentials.
        type: str
      password:
        description: The account's password.
        type: str
      ca_path:
        description: A CA bundle (PEM) the registry's certificate is checked against; none uses the system's.
        type: path
  target:
    description: The registry the images go to (the one of the host it runs on).
    required: true
    type: dict
    suboptions: *registry
  images:
    description: The images to copy, each a repository and a tag.
    required: true
    type: list
    elements: dict
    suboptions:
      repository:
        description: The repository in both registries (C(demo), C(base/debian)).
        required: true
        type: str
      tag:
        description: The tag, read in the source and put in the target.
        required: true
        type: str
  timeout:
    description: Seconds each HTTP request may wait for an answer.
    default: 60
    type: int
author: fleetdeploy
"""

EXAMPLES = r"""
- name: Copy release v42 from staging's registry into prod's
  fleetdeploy_image_copy:
    source:
      registry: registry.staging.example.com:5000
      username: fleetdeploy
      password: "{{ vault_promote_source_password }}"
      ca_path: /etc/fleetdeploy/promote-source-ca.crt
    target:
      registry: registry.prod.example.com:5000
      username: fleetdeploy
      password: "{{ vault_fleetdeploy_registry_password }}"
      ca_path: /etc/docker/certs.d/registry.prod.example.com:5000/ca.crt
    images:
      - {repository: web, tag: v42}
      - {repository: tracking, tag: v42}
  no_log: true
"""

RETURN = r"""
images:
  description: One entry per image, in the order of O(images).
  returned: always
  type: list
  elements: dict
  contains:
    repository:
      description: The repository.
      type: str
    tag:
      description: The tag.
      type: str
    digest:
      description: The manifest's digest, the same in both registries.
      type: str
    media_type:
      description: The manifest's media type (an image manifest, a manifest list or an OCI index).
      type: str
    copied:
      description: Whether the image was copied (or would be, in check mode).
      type: bool
    manifests:
      description: Manifests put into the target (the listed images' and then the tagged one).
      type: int
    blobs_copied:
      description: Blobs the target lacked and got.
      type: int
    bytes_copied:
      description: Bytes of those blobs.
      type: int
"""

import base64
import hashlib
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from ansible.module_utils.basic import AnsibleModule

MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
INDEX_TYPES = MANIFEST_TYPES[:2]
CHUNK = 1 << 20


class RegistryError(Exception):
    """A registry answered something other than what the copy needs."""


class NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are followed by hand: a blob's redirect (to object storage) must not carry the credentials."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        return None


class Registry:
    """One registry's v2 API, with its credentials and its CA."""

    def __init__(self, spec: dict[str, Any], timeout: int) -> None:
        self.name = spec["registry"]
        self.base = f"https://{self.name}/v2/"
        self.timeout = timeout
        self.auth = None
        if spec.get("username"):
            token = f"{spec['username']}:{spec.get('password') or ''}".encode()
            self.auth = "Basic " + base64.b64encode(token).decode()
        self.context = ssl.create_default_context(cafile=spec.get("ca_path") or None)
        self.opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=self.context), NoRedirect)
        # Redirected blob downloads go to another server, checked against the system's CAs, without credentials.
        self.plain = urllib.request.build_opener(urllib.request.HTTPSHandler(context=ssl.create_default_context()))

    def open(self, method: str, path: str, headers: dict[str, str] | None = None, data: Any = None,
             ok: tuple[int, ...] = (200,)) -> Any:
        """The response to a request under /v2/ (or an absolute URL the registry gave); a status outside `ok`
        raises, except 404 when it is in `ok`, which returns None."""
        url = urllib.parse.urljoin(self.base, path)
        request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
        if self.auth:
            request.add_header("Authorization", self.auth)
        try:
            return self.opener.open(request, timeout=self.timeout)
        except urllib.error.HTTPError as error:
            if error.code == 404 and 404 in ok:
                return None
            if error.code in (301, 302, 303, 307, 308) and method == "GET" and error.headers.get("Location"):
                target = urllib.parse.urljoin(url, error.headers["Location"])
                return self.plain.open(urllib.request.Request(target, method="GET"), timeout=self.timeout)
            body = error.read(2000).decode("utf-8", "replace").strip()
            raise RegistryError(f"{method} https://{self.name}{urllib.parse.urlsplit(url).path} answered "
                                f"{error.code} {error.reason}: {body}") from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise RegistryError(f"cannot reach the registry {self.name}: {reason}") from None

    def manifest(self, repository: str, reference: str) -> tuple[bytes, str] | None:
        """The manifest's exact bytes and media type, or None when the registry has no such tag or digest."""
        response = self.open("GET", f"{repository}/manifests/{reference}", {"Accept": ", ".join(MANIFEST_TYPES)},
                             ok=(200, 404))
        if response is None:
            return None
        with response:
            body = response.read()
            media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        return body, json.loads(body).get("mediaType") or media_type

    def digest_of(self, repository: str, tag: str) -> str | None:
        """The digest the registry has under the tag, or None."""
        response = self.open("HEAD", f"{repository}/manifests/{tag}", {"Accept": ", ".join(MANIFEST_TYPES)},
                             ok=(200, 404))
        if response is None:
            return None
        with response:
            digest = response.headers.get("Docker-Content-Digest")
        if digest:
            return digest
        found = self.manifest(repository, tag)
        return digest_of(found[0]) if found else None

    def has_blob(self, repository: str, digest: str) -> bool:
        response = self.open("HEAD", f"{repository}/blobs/{digest}", ok=(200, 404))
        if response is not None:
            response.close()
        return response is not None

    def has_manifest(self, repository: str, digest: str) -> bool:
        response = self.open("HEAD", f"{repository}/manifests/{digest}", {"Accept": ", ".join(MANIFEST_TYPES)},
                             ok=(200, 404))
        if response is not None:
            response.close()
        return response is not None

    def put_manifest(self, repository: str, reference: str, body: bytes, media_type: str) -> str:
        response = self.open("PUT", f"{repository}/manifests/{reference}", {"Content-Type": media_type}, data=body,
                             ok=(201,))
        with response:
            return response.headers.get("Docker-Content-Digest", "")


def digest_of(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


def children(body: bytes, media_type: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the manifests an index lists, the blobs an image manifest needs: its config and its layers)."""
    document = json.loads(body)
    if media_type in INDEX_TYPES:
        return list(document.get("manifests", [])), []
    if document.get("schemaVersion") != 2 or "config" not in document:
        raise RegistryError(f"the manifest is of an unsupported kind ({media_type or 'no media type'}, "
                            f"schemaVersion {document.get('schemaVersion')}); only v2 and OCI images are copied")
    # A foreign layer (a Windows base image's) lives at its urls, not in the registry.
    layers = [layer for layer in document.get("layers", []) if not layer.get("urls")]
    return [], [document["config"], *layers]


class Copy:
    """The copy of one image: read the source's manifests first, then put what the target lacks."""

    def __init__(self, source: Registry, target: Registry, repository: str, check_mode: bool) -> None:
        self.source, self.target, self.repository = source, target, repository
        self.check_mode = check_mode
        self.manifests = 0
        self.blobs = 0
        self.bytes = 0

    def manifest(self, reference: str) -> tuple[bytes, str, str]:
        found = self.source.manifest(self.repository, reference)
        if found is None:
            raise RegistryError(f"the source registry {self.source.name} has no {self.repository}@{reference}")
        body, media_type = found
        digest = digest_of(body)
        if reference.startswith("sha256:") and digest != reference:
            raise RegistryError(f"the source registry {self.source.name} sent {self.repository}@{reference} "
                                f"with the digest {digest}")
        return body, media_type, digest

    def blob(self, descriptor: dict[str, Any]) -> None:
        digest = descriptor["digest"]
        if self.target.has_blob(self.repository, digest):
            return
        self.blobs += 1
        self.bytes += int(descriptor.get("size", 0))
        if self.check_mode:
            return
        download = self.source.open("GET", f"{self.repository}/blobs/{digest}")
        with download:
            length = download.headers.get("Content-Length") or str(descriptor.get("size", 0))
            upload = self.target.open("POST", f"{self.repository}/blobs/uploads/", data=b"", ok=(202,))
            with upload:
                location = upload.headers["Location"]
            separator = "&" if "?" in location else "?"
            # The target checks the bytes against the digest before it accepts the blob.
            done = self.target.open("PUT", f"{location}{separator}digest={urllib.parse.quote(digest)}",
                                    {"Content-Type": "application/octet-stream", "Content-Length": length},
                                    data=download, ok=(201,))
            done.close()

    def image(self, reference: str, tag: str | None = None) -> None:
        """Copy the manifest `reference` (a digest) with whatever it needs, and put it under `tag` or its digest."""
        body, media_type, digest = self.manifest(reference)
        if tag is None and self.target.has_manifest(self.repository, digest):
            return
        listed, blobs = children(body, media_type)
        for child in listed:
            self.image(child["digest"])
        for descriptor in blobs:
            self.blob(descriptor)
        self.manifests += 1
        if not self.check_mode:
            put = self.target.put_manifest(self.repository, tag or digest, body, media_type)
            if put and put != digest:
                raise RegistryError(f"the target registry {self.target.name} stored {self.repository}:{tag or digest} "
                                    f"as {put}, not {digest}")


def main() -> None:
    registry_options = {
        "registry": {"type": "str", "required": True},
        "username": {"type": "str"},
        "password": {"type": "str", "no_log": True},
        "ca_path": {"type": "path"},
    }
    module = AnsibleModule(
        argument_spec={
            "source": {"type": "dict", "required": True, "options": registry_options},
            "target": {"type": "dict", "required": True, "options": registry_options},
            "images": {"type": "list", "elements": "dict", "required": True,
                       "options": {"repository": {"type": "str", "required": True},
                                   "tag": {"type": "str", "required": True}}},
            "timeout": {"type": "int", "default": 60},
        },
        supports_check_mode=True,
    )
    p = module.params
    source = Registry(p["source"], p["timeout"])
    target = Registry(p["target"], p["timeout"])
    # An image listed twice (two services of one image) is copied once.
    images = list({(i["repository"], i["tag"]): i for i in p["images"]}.values())

    # Every image is read and checked before any is copied: a refusal leaves the target as it was.
    plan, refused = [], []
    try:
        for image in images:
            found = source.manifest(image["repository"], image["tag"])
            if found is None:
                module.fail_json(msg=f"The source registry {source.name} has no {image['repository']}:{image['tag']}. "
                                 "Nothing was changed.", images=[])
            wanted = digest_of(found[0])
            present = target.digest_of(image["repository"], image["tag"])
            if present is not None and present != wanted:
                refused.append(f"{image['repository']}:{image['tag']} is {present} in {target.name} but {wanted} "
                               f"in {source.name}")
            plan.append((image, wanted, found[1], present))
    except RegistryError as error:
        module.fail_json(msg=f"{error}. Nothing was changed.", images=[])
    if refused:
        module.fail_json(msg="Releases are immutable, and the target already has another image under the tag: "
                         + "; ".join(refused) + ". Nothing was changed.", images=[])

    results: list[dict[str, Any]] = []
    for image, wanted, media_type, present in plan:
        entry = {"repository": image["repository"], "tag": image["tag"], "digest": wanted, "media_type": media_type,
                 "copied": present is None, "manifests": 0, "blobs_copied": 0, "bytes_copied": 0}
        if present is None:
            copy = Copy(source, target, image["repository"], module.check_mode)
            try:
                # By the digest checked above: a tag moved in the source since then is not copied.
                copy.image(wanted, tag=image["tag"])
            except RegistryError as error:
                module.fail_json(msg=f"Copying {image['repository']}:{image['tag']} from {source.name} to "
                                 f"{target.name} failed: {error}", images=results)
            entry.update(manifests=copy.manifests, blobs_copied=copy.blobs, bytes_copied=copy.bytes)
        results.append(entry)
    module.exit_json(changed=any(entry["copied"] for entry in results), images=results)


if __name__ == "__main__":
    main()
