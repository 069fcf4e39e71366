import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

# `make test` runs pytest-xdist with --dist loadscope: a test module runs whole on one worker (so a
# module-scoped lab or console starts once), a class too; tests/test_molecule.py makes one class per
# scenario so the scenarios spread over the workers. (loadgroup would read xdist_group marks, but
# with pytest 9 xdist 3.8 no longer applies them.)


# The scopes that take longest, longest first (measured in whole runs: the application's lab (site.yml on
# five hosts, three image builds, a sixth host joining), the deploy tests' lab and its ~20
# tests, the Molecule scenarios, which tests/test_molecule.py already lists longest first, the AWS
# playbooks against moto, the services' image builds). With --no-loadscope-reorder (pyproject.toml) loadscope
# hands out scopes in collection order, so these start first and what is left for the end is short; by
# default it would order scopes by their number of tests, which put every one-test Molecule scenario last.
LONGEST_FIRST = ("tests/test_application.py", "tests/test_deploy.py", "tests/test_molecule.py", "tests/test_aws_infra.py",
                 "tests/test_aws_ecs.py", "services/",
                 "tests/test_lab.py")


def pytest_collection_modifyitems(items: list) -> None:
    """The scopes of LONGEST_FIRST first, in that order; lint last, as a short one is what should start
    when the others are nearly done. The order within each scope is kept (the sort is stable)."""
    def rank(item: Any) -> int:
        if item.nodeid.startswith("tests/test_lint.py"):
            return len(LONGEST_FIRST) + 1
        return next((i for i, prefix in enumerate(LONGEST_FIRST) if item.nodeid.startswith(prefix)),
                    len(LONGEST_FIRST))

    items.sort(key=rank)


def pytest_runtest_logreport(report: Any) -> None:
    """With FD_TEST_TIMELINE set to a file, one JSON line per test phase: the worker that ran it, the test,
    the phase (setup, call, teardown) and its start and stop (epoch seconds). It shows which worker was
    the suite's longest chain, and what it ran (benchmarks/suite_timeline.py draws it)."""
    path = os.environ.get("FD_TEST_TIMELINE")
    if not path or os.environ.get("PYTEST_XDIST_WORKER"):
        return  # under xdist the controller writes every worker's reports, each once
    node = getattr(report, "node", None)
    worker = node.gateway.id if node is not None else "main"
    with open(path, "a", encoding="utf-8") as timeline:
        timeline.write(json.dumps({"worker": worker, "test": report.nodeid, "phase": report.when,
                                   "start": report.start, "stop": report.stop, "outcome": report.outcome}) + "\n")
