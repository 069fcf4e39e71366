"""image_build empties the build host's folder of each context before staging it: its preflight refuses a
work folder that is not an absolute folder below / and an image name that could climb out of it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from helpers import IMAGE_BUILD_PREFLIGHT_PLAY as PLAY
from helpers import REPO, VENV_BIN, run


@pytest.mark.parametrize(("work_dir", "image"), [("/", "demo"), ("relative/build", "demo"),
                                                 ("/var/lib/../../srv", "demo"), ("/var/lib/fleetdeploy/build", "../etc")])
def test_a_work_folder_or_image_name_that_could_empty_another_folder_is_refused(
        tmp_path: Path, work_dir: str, image: str) -> None:
    services = tmp_path / "services"
    shutil.copytree(REPO / "services" / "shared", services / "shared")
    (services / image).mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "services" / "demo" / "Dockerfile", services / image / "Dockerfile")
    (tmp_path / "play.yml").write_text(PLAY)
    build = {"image_build_release": "v1", "image_build_registry": "ops:5000", "image_build_source_dir": str(services),
             "image_build_services": [{"name": "demo", "image": image}], "image_build_work_dir": work_dir,
             "ansible_python_interpreter": str(VENV_BIN / "python")}
    refused = run([str(VENV_BIN / "ansible-playbook"), str(tmp_path / "play.yml"), "-i", "localhost,", "-c", "local",
                   "-e", json.dumps(build)])
    assert refused.returncode != 0
    assert "image_build_work_dir must be an absolute folder other than /" in " ".join(refused.output.split())
