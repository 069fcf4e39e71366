"""Time `molecule test` of Molecule scenarios, one after the other, as the suite runs them. Prints JSON.

What a scenario costs the suite is its wall time; run this on an otherwise idle machine, since the
suite's machine is CPU-bound and two scenarios side by side slow each other down.
Usage: .venv/bin/python benchmarks/molecule_scenarios.py [SCENARIO ...]
  a SCENARIO is a top-level name (backing) or a role's (roles/common:default); no argument times them all.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from helpers import VENV_BIN, run  # noqa: E402
from test_molecule import scenarios  # noqa: E402


def parse(argument: str) -> tuple[Path, str]:
    project, _, name = argument.rpartition(":")
    return (REPO / project if project else REPO), name


def timed_scenario(project: Path, scenario: str) -> dict[str, object]:
    started = time.monotonic()
    result = run([str(VENV_BIN / "molecule"), "test", "-s", scenario], cwd=project, timeout=3600,
                 FD_MOLECULE_PREFIX=f"fdbench-{project.name}-{scenario}")
    return {"scenario": f"{project.relative_to(REPO)}:{scenario}", "wall_s": round(time.monotonic() - started, 1),
            "passed": result.returncode == 0, "load_average_after": round(os.getloadavg()[0], 2)}


def main() -> None:
    chosen = [parse(a) for a in sys.argv[1:]] or scenarios()
    print(json.dumps({"cores": os.cpu_count(), "scenarios": [timed_scenario(p, s) for p, s in chosen]}, indent=2))


if __name__ == "__main__":
    main()
