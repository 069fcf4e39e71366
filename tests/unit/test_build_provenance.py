"""Build provenance (docs/deploy.md): image_build names the commit the services' sources are at, for the
label org.opencontainers.image.revision (and its commit time, org.fleetdeploy.revision.committed), and refuses uncommitted changes under the services it builds
unless image_build_allow_dirty (build.yml's -e build_allow_dirty=true) is set. Runs the role's provenance
tasks on localhost against a throw-away git repository; about 10 s."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from helpers import VENV_BIN, Run, run

PLAY = """\
- name: Name the commit a build would label its images with, as playbooks/build.yml does
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Run the image_build role's provenance tasks
      ansible.builtin.include_role:
        name: image_build
        tasks_from: provenance.yml

    - name: Show the revision
      ansible.builtin.debug:
        msg: "revision={{ _image_build_revision }} committed={{ _image_build_committed }}"
"""


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=test", "-c", "user.email=test@example.com",
                           *args], capture_output=True, text=True, check=True).stdout.strip()


def provenance(tmp_path: Path, services: Path, **extra: object) -> Run:
    (tmp_path / "play.yml").write_text(PLAY)
    build = {"image_build_release": "v1", "image_build_source_dir": str(services),
             "image_build_services": [{"name": "demo", "image": "demo"}],
             "ansible_python_interpreter": str(VENV_BIN / "python"), **extra}
    return run([str(VENV_BIN / "ansible-playbook"), str(tmp_path / "play.yml"), "-i", "localhost,", "-c", "local",
                "-e", json.dumps(build)])


def test_a_build_names_its_commit_and_refuses_uncommitted_sources(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    services = repo / "services"
    (services / "demo").mkdir(parents=True)
    (services / "other").mkdir()
    (services / "demo" / "Dockerfile").write_text("FROM debian:bookworm\n")
    (services / "other" / "Dockerfile").write_text("FROM debian:bookworm\n")
    (services / "shared").mkdir()
    (services / "shared" / "common.py").write_text("SHARED = 1\n")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "services")
    head = git(repo, "rev-parse", "HEAD")
    committed = git(repo, "show", "--no-patch", "--format=%cI", "HEAD")

    # Changes outside the services built (another service, the repository's root) do not count.
    (services / "other" / "Dockerfile").write_text("FROM debian:trixie\n")
    (repo / "NOTES").write_text("not a build input\n")
    clean = provenance(tmp_path, services)
    assert clean.returncode == 0, clean.output[-3000:]
    assert f"revision={head} committed={committed}" in clean.output

    (services / "demo" / "Dockerfile").write_text("FROM debian:trixie\n")
    (services / "demo" / "new.py").write_text("print()\n")
    refused = provenance(tmp_path, services)
    message = " ".join(refused.output.split())
    assert refused.returncode != 0
    assert "Refusing to build v1 from uncommitted sources" in message, refused.output[-3000:]
    assert "services/demo/Dockerfile, services/demo/new.py" in message and "other" not in message.split("under")[0]
    assert "-e build_allow_dirty=true" in message

    allowed = provenance(tmp_path, services, image_build_allow_dirty=True)
    assert allowed.returncode == 0, allowed.output[-3000:]
    assert f"revision={head}" in allowed.output

    # The shared folder staged into every build context (image_build_shared_dir) is a build input too.
    git(repo, "checkout", "-q", "--", "services/demo")
    (services / "demo" / "new.py").unlink()
    (services / "shared" / "common.py").write_text("SHARED = 2\n")
    shared = provenance(tmp_path, services)
    assert shared.returncode != 0
    assert "services/shared/common.py" in " ".join(shared.output.split()), shared.output[-3000:]


def test_sources_outside_git_are_refused_unless_a_dirty_build_is_asked_for(tmp_path: Path) -> None:
    services = tmp_path / "services"
    (services / "demo").mkdir(parents=True)
    (services / "demo" / "Dockerfile").write_text("FROM debian:bookworm\n")
    refused = provenance(tmp_path, services)
    assert refused.returncode != 0
    assert "is not in a git working tree" in " ".join(refused.output.split()), refused.output[-3000:]
    allowed = provenance(tmp_path, services, image_build_allow_dirty=True)
    assert allowed.returncode == 0 and re.search(r"revision=unknown committed=$", allowed.output, re.M), allowed.output[-3000:]
