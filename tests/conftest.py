import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

# `make test` runs pytest-xdist with --dist loadscope: a test module runs whole on one worker (so a
# module-scoped lab or console starts once), a class too; tests/test_molecule.py makes one class per
# scenario so the scenarios spread over the workers. (loadgroup would read xdist_group marks, but
# with pytest 9 xdist 3.8 no longer applies them.)


def pytest_collection_modifyitems(items: list) -> None:
    """Lint last: loadscope hands out the one-test scopes (lint and each Molecule scenario) in the
    order they were collected, and a short one is what should start when the others are nearly done."""
    items.sort(key=lambda item: item.nodeid.startswith("tests/test_lint.py"))
