"""The registry's htpasswd module (roles/registry/library/fleetdeploy_htpasswd.py), run as Ansible runs it
(a process of its own reading its arguments from a file) against a file in a temporary folder: which entries
it keeps, hashes again and removes, that check mode writes nothing, that it refuses what the registry cannot
use, and that neither a password nor a hash is in anything it prints. The registry scenario
(molecule/registry) checks the entries the role writes on real hosts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import bcrypt
import pytest

from helpers import REPO

MODULE = REPO / "roles" / "registry" / "library" / "fleetdeploy_htpasswd.py"
CANARY = "canary-password-9f3b1c"


def run(tmp_path: Path, users: list[dict[str, str]], cost: int = 4, check: bool = False) -> dict:
    arguments = tmp_path / "args.json"
    arguments.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {
        "path": str(tmp_path / "htpasswd"), "users": users, "cost": cost, "mode": "0640", "_ansible_check_mode": check}}))
    ran = subprocess.run([sys.executable, str(MODULE), str(arguments)], capture_output=True, text=True, check=False)
    printed = ran.stdout + ran.stderr
    assert CANARY not in printed and "$2b$" not in printed, "the module printed a password or a hash"
    return json.loads(ran.stdout)


def entries(tmp_path: Path) -> dict[str, str]:
    return dict(line.split(":", 1) for line in (tmp_path / "htpasswd").read_text().splitlines())


def accounts(*names: str, password: str = CANARY) -> list[dict[str, str]]:
    return [{"name": name, "password": f"{password}-{name}"} for name in names]


def test_a_new_file_has_one_entry_per_account_at_the_cost_and_mode_asked(tmp_path: Path) -> None:
    result = run(tmp_path, accounts("push", "pull"), cost=5)
    assert (result["changed"], result["added"], result["rehashed"], result["removed"]) == (True, ["push", "pull"], [], [])
    written = entries(tmp_path)
    assert list(written) == ["push", "pull"]
    assert all(hashed.startswith("$2b$05$") for hashed in written.values())
    assert bcrypt.checkpw(f"{CANARY}-pull".encode(), written["pull"].encode())
    assert oct(os.stat(tmp_path / "htpasswd").st_mode & 0o777) == "0o640"


def test_a_second_run_changes_nothing_and_keeps_the_hashes(tmp_path: Path) -> None:
    run(tmp_path, accounts("push", "pull"))
    before = entries(tmp_path)
    result = run(tmp_path, accounts("push", "pull"))
    assert (result["changed"], result["added"], result["rehashed"], result["removed"]) == (False, [], [], [])
    assert entries(tmp_path) == before


def test_a_new_cost_or_password_hashes_again_only_what_it_concerns(tmp_path: Path) -> None:
    run(tmp_path, accounts("push", "pull"))
    kept = entries(tmp_path)["pull"]
    changed = [{"name": "push", "password": "another-" + CANARY}, accounts("pull")[0]]
    result = run(tmp_path, changed)
    assert (result["changed"], result["rehashed"]) == (True, ["push"])
    assert entries(tmp_path)["pull"] == kept
    assert bcrypt.checkpw(f"another-{CANARY}".encode(), entries(tmp_path)["push"].encode())
    result = run(tmp_path, changed, cost=5)
    assert result["rehashed"] == ["push", "pull"]
    assert all(hashed.startswith("$2b$05$") for hashed in entries(tmp_path).values())


def test_accounts_no_longer_listed_and_stray_lines_are_removed(tmp_path: Path) -> None:
    run(tmp_path, accounts("push", "pull", "old"))
    with (tmp_path / "htpasswd").open("a") as stray:
        stray.write("# a comment\nmd5user:$apr1$abc$def\n")
    result = run(tmp_path, accounts("push", "pull"))
    assert (result["changed"], result["removed"], result["added"], result["rehashed"]) == (True, ["old"], [], [])
    assert list(entries(tmp_path)) == ["push", "pull"]


def test_check_mode_reports_the_change_and_writes_nothing(tmp_path: Path) -> None:
    result = run(tmp_path, accounts("push"), check=True)
    assert (result["changed"], result["added"]) == (True, ["push"])
    assert not (tmp_path / "htpasswd").exists()
    run(tmp_path, accounts("push"))
    before = (tmp_path / "htpasswd").read_text()
    assert run(tmp_path, accounts("push"), cost=6, check=True)["rehashed"] == ["push"]
    assert (tmp_path / "htpasswd").read_text() == before


@pytest.mark.parametrize(("users", "cost", "message"), [
    (accounts("push"), 3, "cost must be 4 to 31 (bcrypt's range), got 3"),
    (accounts("pu:sh"), 4, "names: ['pu:sh']"),
    (accounts("push", "push"), 4, "names: ['push', 'push']"),
    ([{"name": "push", "password": ""}], 4, "a non-empty password"),
])
def test_what_the_registry_cannot_use_fails_and_writes_nothing(
        tmp_path: Path, users: list[dict[str, str]], cost: int, message: str) -> None:
    result = run(tmp_path, users, cost=cost)
    assert result.get("failed") and message in result["msg"], result
    assert not (tmp_path / "htpasswd").exists()
