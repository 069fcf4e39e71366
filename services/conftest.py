"""The services' tests: their own folders (services/<name>/tests/) find the shared module here."""

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # helpers: SLOT_SUFFIX

import testing  # noqa: E402 (after the path it needs)


@pytest.fixture(scope="session")
def backing() -> Iterator[testing.Backing]:
    """The PostgreSQL + Redis every service's tests share (one container per test slot)."""
    shared = testing.acquire_backing()
    try:
        yield shared
    finally:
        testing.release_backing()
