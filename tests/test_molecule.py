"""Every Molecule scenario in the repository: converge, idempotence (changed=0 on the second run), verify.

Scenarios are found on disk, so a new role's scenario is tested without editing this file.
"""

from __future__ import annotations

from pathlib import Path

import docker
import pytest

from helpers import REPO, VENV_BIN, run

pytestmark = [pytest.mark.molecule, pytest.mark.slow]


def scenarios() -> list[tuple[Path, str]]:
    found = [(REPO, p.parent.name) for p in sorted((REPO / "molecule").glob("*/molecule.yml"))]
    for path in sorted((REPO / "roles").glob("*/molecule/*/molecule.yml")):
        found.append((path.parent.parent.parent, path.parent.name))
    return found


def dangling_volumes(client: docker.DockerClient) -> set[str]:
    return {v.name for v in client.volumes.list(filters={"dangling": True})}


@pytest.mark.parametrize(
    ("project", "scenario"),
    scenarios(),
    ids=lambda value: value.name if isinstance(value, Path) else value,
)
def test_scenario(project: Path, scenario: str) -> None:
    client = docker.from_env()
    before = dangling_volumes(client)
    try:
        result = run(
            [str(VENV_BIN / "molecule"), "test", "-s", scenario],
            cwd=project,
            timeout=2400,
            # Host and network names of their own, so scenarios never collide with each other or a lab.
            FD_MOLECULE_PREFIX=f"fd-{project.name}-{scenario}",
        )
    finally:
        # The hosts' anonymous /var/lib/docker volumes outlive them; remove only those this run left.
        for name in dangling_volumes(client) - before:
            client.volumes.get(name).remove(force=True)
    assert result.returncode == 0, result.output[-8000:]
