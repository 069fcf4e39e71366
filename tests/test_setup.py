"""The setup scripts: the venv step is a no-op when the pins have not changed; a running engine is left alone."""

from __future__ import annotations

import os
import subprocess

import docker
import pytest

from helpers import REPO, start_host, wait_until_booted


def test_venv_setup_is_a_no_op_when_pins_are_unchanged() -> None:
    stamp = REPO / ".venv" / ".fleetdeploy-pins"
    before = stamp.stat().st_mtime_ns
    result = subprocess.run(["bash", "scripts/setup-venv.sh"], cwd=REPO, capture_output=True, text=True, check=True)
    assert "matches the pins" in result.stdout
    assert stamp.stat().st_mtime_ns == before


def test_engine_setup_leaves_a_running_engine_alone() -> None:
    client = docker.from_env()
    started = client.info()["SystemTime"], client.version()["Version"]
    pid_before = subprocess.run(["pgrep", "-o", "dockerd"], capture_output=True, text=True).stdout.strip()
    result = subprocess.run(["bash", "scripts/ensure-engine.sh"], cwd=REPO, capture_output=True, text=True, check=True)
    assert "already answers" in result.stderr
    assert subprocess.run(["pgrep", "-o", "dockerd"], capture_output=True, text=True).stdout.strip() == pid_before
    assert client.version()["Version"] == started[1]


def test_host_images_carry_the_recipe_label_and_a_rerun_reuses_them() -> None:
    client = docker.from_env()
    for tag in ("fleetdeploy/host:debian12", "fleetdeploy/host:debian13"):
        labels = client.images.get(tag).labels
        assert labels.get("org.fleetdeploy.recipe"), tag
    ids = {tag: client.images.get(tag).id for tag in ("fleetdeploy/host:debian12", "fleetdeploy/host:debian13")}
    from helpers import playbook

    again = playbook("playbooks/lab_image.yml").check()
    assert again.changed() == 0, again.output[-3000:]
    assert {tag: client.images.get(tag).id for tag in ids} == ids


@pytest.mark.parametrize("tag", ["fleetdeploy/host:debian12", "fleetdeploy/host:debian13"])
def test_a_file_written_to_tmp_while_a_host_boots_outlives_the_boot(tag: str) -> None:
    """Molecule reaches its hosts with `docker exec` from the first second, and modules unpack into /tmp:
    the boot must not empty it (Debian 12's tmpfiles.d does, unless the image says otherwise)."""
    name = f"fd-bootprobe-{tag.rsplit(':', 1)[1]}-{os.getpid()}"
    start_host(name, tag)
    try:
        subprocess.run(["docker", "exec", name, "touch", "/tmp/written-while-booting"], check=True)
        wait_until_booted(name)
        survived = subprocess.run(["docker", "exec", name, "test", "-e", "/tmp/written-while-booting"], check=False)
        assert survived.returncode == 0, f"{tag}: the boot emptied /tmp"
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)
