"""The release record's rules (roles/app_release/library/fleetdeploy_release_record.py): what a deploy,
a failed swap and a rollback make of current, previous and the history. The deploy tests check the
same records on real hosts; these pin the rollback's choice of previous, which they reach only once."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from helpers import REPO

ROLE = REPO / "roles" / "app_release"


def load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[name] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


# Ansible puts a role's module_utils under ansible.module_utils when it packs the module; so does this.
load("ansible.module_utils.fleetdeploy_files", ROLE / "module_utils" / "fleetdeploy_files.py")
next_record = load("fleetdeploy_release_record", ROLE / "library" / "fleetdeploy_release_record.py").next_record

AT = "2026-11-26T17:00:00.000001Z"


def entry(release: str, action: str = "deploy", result: str = "ok") -> dict:
    return {"release": release, "action": action, "result": result, "user": "u", "time": AT}


def test_a_first_deploy_starts_the_record() -> None:
    record = next_record({"service": "demo"}, "v1", "deploy", "ok", "u", AT, 50)
    assert record == {"service": "demo", "current": "v1", "previous": "", "history": [entry("v1")]}


def test_a_deploy_makes_the_replaced_release_previous() -> None:
    old = {"service": "demo", "current": "v1", "previous": "", "history": [entry("v1")]}
    record = next_record(old, "v2", "deploy", "ok", "u", AT, 50)
    assert (record["current"], record["previous"]) == ("v2", "v1")
    assert record["history"] == [entry("v2"), entry("v1")]


def test_a_failed_swap_changes_only_the_history() -> None:
    old = {"service": "demo", "current": "v2", "previous": "v1", "history": [entry("v2"), entry("v1")]}
    record = next_record(old, "bad", "deploy", "failed", "u", AT, 50)
    assert (record["current"], record["previous"]) == ("v2", "v1")
    assert record["history"][0] == entry("bad", result="failed")


def test_a_rollback_makes_previous_the_newest_good_release_older_than_both() -> None:
    history = [entry("v3"), entry("bad", result="failed"), entry("v2"), entry("v1")]
    old = {"service": "demo", "current": "v3", "previous": "v2", "history": history}
    record = next_record(old, "v2", "rollback", "ok", "u", AT, 50)
    assert (record["current"], record["previous"]) == ("v2", "v1")
    assert record["history"][0] == entry("v2", action="rollback")


def test_the_same_release_again_moves_nothing() -> None:
    old = {"service": "demo", "current": "v2", "previous": "v1", "history": [entry("v2"), entry("v1")]}
    record = next_record(old, "v2", "deploy", "ok", "u", AT, 50)
    assert (record["current"], record["previous"]) == ("v2", "v1")


def test_the_history_keeps_its_length() -> None:
    old = {"service": "demo", "current": "v3", "previous": "v2", "history": [entry("v3"), entry("v2"), entry("v1")]}
    assert [h["release"] for h in next_record(old, "v4", "deploy", "ok", "u", AT, 3)["history"]] == ["v4", "v3", "v2"]
