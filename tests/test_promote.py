"""library/fleetdeploy_image_copy.py between two real registries: Debian's docker-registry (Docker
distribution 2.8) run twice on 127.0.0.1, each with its own throw-away CA, TLS and bcrypt htpasswd auth.
Images are pushed into the source over the v2 API (an image manifest, and a manifest list of two), then
copied with `ansible localhost -m fleetdeploy_image_copy`, the way playbooks/promote.yml runs it.
About 15 s: two registries start, seven module runs."""

from __future__ import annotations

import base64
import datetime
import gzip
import hashlib
import io
import ipaddress
import json
import os
import ssl
import subprocess
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from helpers import REPO, VENV_BIN, free_port, run

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import crypt  # bcrypt hashes for the htpasswd files, as Docker distribution wants them (Python 3.11)

REGISTRY_BIN = Path("/usr/bin/docker-registry")
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
ACCEPT = ", ".join([OCI_INDEX, DOCKER_LIST, "application/vnd.oci.image.manifest.v1+json", DOCKER_MANIFEST])


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def make_ca(folder: Path) -> None:
    """A CA of its own (ca.crt) and a certificate for 127.0.0.1 signed by it (tls.crt, tls.key)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"test CA {folder.name}")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])).issuer_name(ca_name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    (folder / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (folder / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "tls.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))


@dataclass
class Registry:
    """One docker-registry process with its CA, account and a small v2 client for the test's own pushes."""

    folder: Path
    port: int
    username: str
    password: str
    process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def spec(self) -> dict[str, str]:
        """The module's source or target option."""
        return {"registry": self.address, "username": self.username, "password": self.password,
                "ca_path": str(self.folder / "ca.crt")}

    def start(self) -> None:
        make_ca(self.folder)
        salt = crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16)  # cost 4: fast enough for many requests
        (self.folder / "htpasswd").write_text(f"{self.username}:{crypt.crypt(self.password, salt)}\n")
        config = {
            "version": 0.1,
            "log": {"level": "warn"},
            "storage": {"filesystem": {"rootdirectory": str(self.folder / "data")}},
            "http": {"addr": self.address, "secret": base64.b64encode(os.urandom(24)).decode(),
                     "tls": {"certificate": str(self.folder / "tls.crt"), "key": str(self.folder / "tls.key")}},
            "auth": {"htpasswd": {"realm": "test", "path": str(self.folder / "htpasswd")}},
        }
        (self.folder / "config.yml").write_text(json.dumps(config))  # JSON is YAML
        log = (self.folder / "registry.log").open("wb")
        self.process = subprocess.Popen([str(REGISTRY_BIN), "serve", str(self.folder / "config.yml")],
                                        stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while True:
            try:
                self.request("GET", "")
                return
            except (OSError, urllib.error.URLError):
                assert self.process.poll() is None, (self.folder / "registry.log").read_text()
                assert time.monotonic() < deadline, (self.folder / "registry.log").read_text()
                time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def request(self, method: str, path: str, data: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        context = ssl.create_default_context(cafile=str(self.folder / "ca.crt"))
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        url = urllib.parse.urljoin(f"https://{self.address}/v2/", path)
        request = urllib.request.Request(url, data=data, method=method,
                                         headers={"Authorization": f"Basic {token}", **(headers or {})})
        try:
            with urllib.request.urlopen(request, context=context, timeout=10) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read()

    def push_blob(self, repository: str, data: bytes) -> dict[str, object]:
        status, headers, _ = self.request("POST", f"{repository}/blobs/uploads/", b"")
        assert status == 202, status
        location = headers["Location"]
        separator = "&" if "?" in location else "?"
        status, _, body = self.request("PUT", f"{location}{separator}digest={sha256(data)}", data,
                                       {"Content-Type": "application/octet-stream"})
        assert status == 201, body
        return {"digest": sha256(data), "size": len(data)}

    def push_manifest(self, repository: str, reference: str, body: bytes, media_type: str) -> str:
        status, headers, answer = self.request("PUT", f"{repository}/manifests/{reference}", body,
                                               {"Content-Type": media_type})
        assert status == 201, answer
        return headers["Docker-Content-Digest"]

    def push_image(self, repository: str, reference: str, layers: list[bytes], arch: str = "amd64") -> bytes:
        """A docker v2 image of the given layers (and a config naming them) under `reference`; its bytes."""
        descriptors = [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                        **self.push_blob(repository, layer)} for layer in layers]
        config = json.dumps({"architecture": arch, "os": "linux", "config": {},
                             "rootfs": {"type": "layers", "diff_ids": [sha256(gzip.decompress(layer))
                                                                        for layer in layers]}}).encode()
        manifest = json.dumps({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
                               "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                                          **self.push_blob(repository, config)},
                               "layers": descriptors}, indent=3).encode()
        self.push_manifest(repository, reference, manifest, DOCKER_MANIFEST)
        return manifest

    def manifest(self, repository: str, reference: str) -> tuple[int, str, bytes]:
        status, headers, body = self.request("GET", f"{repository}/manifests/{reference}", headers={"Accept": ACCEPT})
        return status, headers.get("Docker-Content-Digest", ""), body

    def blob(self, repository: str, digest: str) -> bytes:
        status, _, body = self.request("GET", f"{repository}/blobs/{digest}")
        assert status == 200, (status, digest)
        return body


def layer(name: str, content: bytes) -> bytes:
    """A gzipped tar of one file, as an image layer."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo(name)
        info.size = len(content)
        archive.addfile(info, io.BytesIO(content))
    return gzip.compress(buffer.getvalue(), mtime=0)


@pytest.fixture(scope="module")
def registries(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Registry, Registry]]:
    installed = run(["bash", str(REPO / "scripts" / "ensure-package.sh"), "docker-registry", "/usr/bin/docker-registry"])
    assert installed.returncode == 0, installed.output
    root = tmp_path_factory.mktemp("registries")
    pair = []
    for name in ("staging", "prod"):
        (root / name).mkdir()
        pair.append(Registry(root / name, free_port(), f"{name}-user", f"{name}-{os.urandom(6).hex()}"))
    try:
        for registry in pair:
            registry.start()
        yield pair[0], pair[1]
    finally:
        for registry in pair:
            registry.stop()


def copy(source: Registry, target: Registry, images: list[tuple[str, str]], *args: str) -> dict:
    """One ad hoc run of the module on localhost; its result."""
    arguments = {"source": source.spec(), "target": target.spec(),
                 "images": [{"repository": repository, "tag": tag} for repository, tag in images]}
    result = run([str(VENV_BIN / "ansible"), "localhost", "-i", "localhost,", "-c", "local",
                  "-e", f"ansible_python_interpreter={VENV_BIN / 'python'}",
                  "-m", "fleetdeploy_image_copy", "-a", json.dumps(arguments), *args],
                 ANSIBLE_LOAD_CALLBACK_PLUGINS="true", ANSIBLE_STDOUT_CALLBACK="ansible.posix.json")
    assert "{" in result.output, result.output
    # profile_tasks (ansible.cfg) prints its timings around the JSON.
    answer, _ = json.JSONDecoder().raw_decode(result.output[result.output.index("{"):])
    return answer["plays"][0]["tasks"][0]["hosts"]["localhost"]


def test_an_image_and_a_manifest_list_reach_the_target_with_their_digests(registries: tuple[Registry, Registry]) -> None:
    """Check mode first (nothing written), then the copy: the target has the same manifest bytes under the
    tag, every child and blob; a second run copies nothing; a shared layer is not copied twice."""
    staging, prod = registries
    base = layer("etc/base", b"base layer " * 1000)
    web = staging.push_image("web", "v1", [base, layer("srv/web", b"web v1")])
    amd = staging.push_image("tracking", "amd64-v1", [layer("srv/tracking", b"amd64")])
    arm = staging.push_image("tracking", "arm64-v1", [layer("srv/tracking", b"arm64")], arch="arm64")
    index = json.dumps({"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": [
        {"mediaType": DOCKER_MANIFEST, "digest": sha256(body), "size": len(body),
         "platform": {"architecture": arch, "os": "linux"}} for arch, body in (("amd64", amd), ("arm64", arm))]}).encode()
    staging.push_manifest("tracking", "v1", index, DOCKER_LIST)
    images = [("web", "v1"), ("tracking", "v1")]

    checked = copy(staging, prod, images, "--check")
    assert checked.get("failed") is not True, checked
    assert checked["changed"] is True and [i["copied"] for i in checked["images"]] == [True, True], checked
    assert [i["digest"] for i in checked["images"]] == [sha256(web), sha256(index)]
    assert prod.manifest("web", "v1")[0] == 404 and prod.manifest("tracking", "v1")[0] == 404

    copied = copy(staging, prod, images)
    assert copied.get("failed") is not True, copied
    assert copied["changed"] is True, copied
    web_result, tracking_result = copied["images"]
    assert (web_result["manifests"], web_result["blobs_copied"]) == (1, 3), web_result  # config + two layers
    assert (tracking_result["media_type"], tracking_result["manifests"]) == (DOCKER_LIST, 3), tracking_result
    for repository, body in (("web", web), ("tracking", index)):
        status, digest, stored = prod.manifest(repository, "v1")
        assert (status, digest, stored) == (200, sha256(body), body)
    for repository, body in (("web", web), ("tracking", amd), ("tracking", arm)):
        assert prod.manifest(repository, sha256(body))[2] == body
        document = json.loads(body)
        for descriptor in [document["config"], *document["layers"]]:
            assert sha256(prod.blob(repository, descriptor["digest"])) == descriptor["digest"]

    again = copy(staging, prod, images)
    assert again["changed"] is False and [i["copied"] for i in again["images"]] == [False, False], again
    assert copy(staging, prod, images, "--check")["changed"] is False

    # v2 shares the base layer with v1, which the target has: only the new layer and config travel.
    staging.push_image("web", "v2", [base, layer("srv/web", b"web v2")])
    second = copy(staging, prod, [("web", "v2")])
    assert second["changed"] is True and second["images"][0]["blobs_copied"] == 2, second


def test_a_tag_the_target_has_with_another_digest_is_refused_and_nothing_changes(
        registries: tuple[Registry, Registry]) -> None:
    """Releases are immutable: prod already has postcode:v7 with other bytes. The run fails naming the image
    and both digests, and copies nothing, not even search:v7 listed before it."""
    staging, prod = registries
    wanted = staging.push_image("postcode", "v7", [layer("srv/postcode", b"staging's")])
    theirs = prod.push_image("postcode", "v7", [layer("srv/postcode", b"built in prod")])
    staging.push_image("search", "v7", [layer("srv/search", b"search")])

    for args in ((), ("--check",)):
        refused = copy(staging, prod, [("search", "v7"), ("postcode", "v7")], *args)
        assert refused.get("failed") is True, refused
        assert "postcode:v7" in refused["msg"] and sha256(wanted) in refused["msg"], refused["msg"]
        assert sha256(theirs) in refused["msg"] and "Nothing was changed" in refused["msg"], refused["msg"]
    assert prod.manifest("postcode", "v7")[1] == sha256(theirs)
    assert prod.manifest("search", "v7")[0] == 404


def test_a_tag_missing_from_the_source_fails_and_a_wrong_password_is_named(
        registries: tuple[Registry, Registry]) -> None:
    staging, prod = registries
    missing = copy(staging, prod, [("web", "v404")])
    assert missing.get("failed") is True and "has no web:v404" in missing["msg"], missing
    intruder = Registry(staging.folder, staging.port, staging.username, "not-the-password")
    refused = copy(intruder, prod, [("web", "v1")])
    assert refused.get("failed") is True and "401" in refused["msg"], refused
    assert "not-the-password" not in json.dumps(refused)
