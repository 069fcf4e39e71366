"""`make lint` as part of the suite: yamllint, a syntax check of every playbook, ansible-lint (production).

Run here rather than before pytest, so it shares the machine with the Molecule scenarios instead of
holding up the deploy tests' lab, the suite's longest chain.
"""

from __future__ import annotations

import pytest

from helpers import run

pytestmark = pytest.mark.slow


def test_the_repository_passes_every_linter() -> None:
    result = run(["nice", "-n", "10", "bash", "scripts/lint.sh"])
    assert result.returncode == 0, result.output[-8000:]
