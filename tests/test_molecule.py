"""Every Molecule scenario in the repository: converge, idempotence (changed=0 on the second run), verify.

Scenarios are found on disk, so a new role's scenario is tested without editing this file.
"""

from __future__ import annotations

import re
from pathlib import Path

import docker
import pytest

from helpers import REPO, SLOT_SUFFIX, VENV_BIN, run

pytestmark = [pytest.mark.molecule, pytest.mark.slow]


def scenarios() -> list[tuple[Path, str]]:
    """Longest first, so that no long scenario is left to start when the other workers run dry: the
    top-level scenarios (several roles on both hosts), then each role's, and the platform's last
    (it converges nothing)."""
    top = [(REPO, p.parent.name) for p in sorted((REPO / "molecule").glob("*/molecule.yml"))]
    roles = [(p.parent.parent.parent, p.parent.name) for p in sorted((REPO / "roles").glob("*/molecule/*/molecule.yml"))]
    platform = [(REPO, "platform")]
    return [s for s in top if s not in platform] + roles + platform


ANONYMOUS = re.compile(r"[0-9a-f]{64}")


def dangling_volumes(client: docker.DockerClient) -> set[str]:
    """Anonymous volumes (a 64-hex name, no labels) that no container uses. A named or labelled volume is
    someone's on purpose, even when nothing mounts it yet: test_lab's decoy volume is one."""
    return {v.name for v in client.volumes.list(filters={"dangling": True})
            if ANONYMOUS.fullmatch(v.name) and not v.attrs.get("Labels")}


def run_scenario(project: Path, scenario: str) -> None:
    client = docker.from_env()
    before = dangling_volumes(client)
    try:
        result = run(
            # Niced: the deploy tests' lab is the suite's longest chain, and the scenarios beside it have time to spare.
            ["nice", "-n", "10", str(VENV_BIN / "molecule"), "test", "-s", scenario],
            cwd=project,
            timeout=2400,
            # Host and network names of their own, so scenarios never collide with each other or a lab.
            FD_MOLECULE_PREFIX=f"fd{SLOT_SUFFIX}-{project.name}-{scenario}",
        )
    finally:
        # The hosts' anonymous /var/lib/docker volumes outlive them; remove only those this run left
        # (a scenario running beside this one may have removed one of them already).
        for name in dangling_volumes(client) - before:
            try:
                client.volumes.get(name).remove(force=True)
            except docker.errors.NotFound:
                pass
    assert result.returncode == 0, failure_report(result.output)


def failure_report(output: str) -> str:
    """What a failed scenario needs to be understood: each failed task (its error can sit long before the
    end of the output, when the other host carries on), then the output's end."""
    lines = output.splitlines()
    failed = [i for i, line in enumerate(lines) if "fatal:" in line or "FAILED!" in line or "[ERROR]" in line]
    excerpts = ["\n".join(lines[max(i - 3, 0):i + 12]) for i in failed[:6]]
    return "\n...\n".join(excerpts + [output[-6000:]])


def _scenario_class(project: Path, scenario: str) -> type:
    def test_converge_idempotence_verify(self: object) -> None:
        run_scenario(project, scenario)

    return type(f"TestScenario_{project.name}_{scenario}", (), {
        "test_converge_idempotence_verify": test_converge_idempotence_verify})


# One class per scenario: `make test` runs pytest-xdist with --dist loadscope, which keeps a class
# (or a module) on one worker, so the scenarios spread over the workers instead of queueing on one.
for _project, _scenario in scenarios():
    _cls = _scenario_class(_project, _scenario)
    globals()[_cls.__name__] = _cls
