import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

# `make test` runs pytest-xdist with --dist loadgroup: the Molecule scenarios run one after the other
# on one worker, the deploy lab on another, everything else on a third. They share no names or ports.
_GROUPS = {"test_molecule.py": "molecule", "test_deploy.py": "deploy"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.xdist_group(_GROUPS.get(item.path.name, "rest")))
