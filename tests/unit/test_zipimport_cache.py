"""The host images' cache of code compiled from zip imports (roles/lab_image/files): a second import of
the same source from another zip compiles nothing and names the zip it came from; a cache folder
anyone else can write, or a symlink, is never used. Each case runs in a Python of its own, so the hook stays there."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from helpers import REPO

CACHE_MODULE = REPO / "roles" / "lab_image" / "files" / "fleetdeploy_zipimport_cache.py"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the cache serves root only")

IMPORT = """
import runpy, sys, traceback, zipimport
calls = []
original = zipimport._compile_source
def counting(pathname, source):
    calls.append(pathname)
    return original(pathname, source)
zipimport._compile_source = counting
cache = runpy.run_path(sys.argv[1], run_name="cache_under_test")
print("installed" if cache["install"](sys.argv[2]) else "not installed")
sys.path.insert(0, sys.argv[3])
import payload
try:
    payload.fail()
except RuntimeError:
    print("raised in:", traceback.extract_tb(sys.exc_info()[2])[-1].filename)
print("compiled:", len(calls))
"""


def payload_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("payload.py", "def fail():\n    raise RuntimeError('from the payload')\n")
    return path


def import_from(zip_path: Path, cache: Path) -> str:
    done = subprocess.run([sys.executable, "-c", IMPORT, str(CACHE_MODULE), str(cache), str(zip_path)],
                          capture_output=True, text=True, timeout=60, check=True)
    return done.stdout


def test_the_second_import_of_the_same_source_compiles_nothing_and_names_its_own_zip(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = import_from(payload_zip(tmp_path / "first.zip"), cache)
    assert first.splitlines()[0] == "installed" and "compiled: 1" in first, first
    assert (cache.stat().st_mode & 0o777) == 0o700
    assert len(list(cache.iterdir())) == 1
    second = import_from(payload_zip(tmp_path / "second.zip"), cache)
    assert "compiled: 0" in second, second
    assert "second.zip" in second and "first.zip" not in second, second


def test_a_cache_folder_others_can_write_is_not_used(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    cache.chmod(0o770)
    answer = import_from(payload_zip(tmp_path / "first.zip"), cache)
    assert answer.splitlines()[0] == "not installed", answer
    assert list(cache.iterdir()) == []


def test_a_cache_folder_that_is_a_symlink_is_not_used(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "cache").symlink_to(real)
    answer = import_from(payload_zip(tmp_path / "first.zip"), tmp_path / "cache")
    assert answer.splitlines()[0] == "not installed", answer
    assert list(real.iterdir()) == []


def test_a_damaged_entry_is_compiled_again(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    import_from(payload_zip(tmp_path / "first.zip"), cache)
    for entry in cache.iterdir():
        entry.write_bytes(b"not marshal data")
    again = import_from(payload_zip(tmp_path / "second.zip"), cache)
    assert "compiled: 1" in again and "second.zip" in again, again
