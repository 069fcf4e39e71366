"""Every service image the build makes has a HEALTHCHECK (docker-bench-security 4.6, docs/security.md):
image_build's preflight refuses a Dockerfile without one, unless the service brings its own healthcheck."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from helpers import IMAGE_BUILD_PREFLIGHT_PLAY as PLAY
from helpers import REPO, VENV_BIN, run


def test_the_build_refuses_a_service_image_without_a_healthcheck(tmp_path: Path) -> None:
    services = tmp_path / "services"
    shutil.copytree(REPO / "services" / "demo", services / "demo")
    shutil.copytree(REPO / "services" / "shared", services / "shared")  # image_build_shared_dir's default
    for name in ("plain", "own-check"):
        (services / name).mkdir()
        (services / name / "Dockerfile").write_text('FROM debian:bookworm\nCMD ["sleep", "infinity"]\n')
    (tmp_path / "play.yml").write_text(PLAY)
    build = {
        "image_build_release": "v1",
        "image_build_registry": "ops:5000",
        # The preflight asks the controller's tar for its version: a module, run by the venv's Python.
        "ansible_python_interpreter": str(VENV_BIN / "python"),
        "image_build_source_dir": str(services),
        "image_build_services": [
            {"name": "demo", "image": "demo"},
            {"name": "plain", "image": "plain"},
            {"name": "own-check", "image": "own-check", "healthcheck": {"test": ["NONE"]}},
        ],
    }
    refused = run([str(VENV_BIN / "ansible-playbook"), str(tmp_path / "play.yml"), "-i", "localhost,", "-c", "local",
                   "-e", json.dumps(build)])
    assert refused.returncode != 0
    failed = [line for line in refused.output.splitlines() if line.startswith("failed:")]
    assert len(failed) == 1 and "(item=plain)" in failed[0], refused.output[-3000:]
    assert f"{services}/plain/Dockerfile has no HEALTHCHECK" in " ".join(refused.output.split())
