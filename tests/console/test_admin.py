"""Users and tokens through the one admin code path (domain/admin.py), as the command line and the API reach
it: what the layer split made the same for both front ends."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text

from conftest import Client, FakeRegistry, cli, write_config
from fleetdeploy.console.db import make_engine
from fleetdeploy.console.domain.admin import NAME_RULE


def _user(root: Path, name: str) -> tuple[str, str, str | None]:
    """(role, password hash, environments as stored) of a user, from the console's database."""
    with make_engine(f"sqlite:///{root / 'data' / 'console.db'}").connect() as conn:
        return tuple(conn.execute(text("SELECT role, password_hash, environments FROM users WHERE name = :n"),
                                  {"n": name}).one())


def test_the_command_line_reads_environments_as_the_pages_do_and_an_update_without_password_keeps_it(
        tmp_path: Path, registry: FakeRegistry) -> None:
    config = write_config(tmp_path, registry.url, None)
    made = cli(config, "create-user", "ops", "--role", "deployer", "--environments", "fleet staging",
               "--password-stdin", stdin="ops-password-1234\n")
    assert made.returncode == 0, made.stderr
    role, first_hash, environments = _user(tmp_path, "ops")
    assert (role, environments) == ("deployer", '["fleet", "staging"]')
    # A change of role and scope with no password given keeps the password the user has.
    changed = cli(config, "create-user", "ops", "--role", "viewer", "--environments", "fleet,staging", "--update",
                  "--password-stdin", stdin="\n")
    assert changed.returncode == 0, changed.stderr
    assert _user(tmp_path, "ops") == ("viewer", first_hash, '["fleet", "staging"]')
    # A new user still needs one.
    refused = cli(config, "create-user", "dev", "--role", "viewer", "--password-stdin", stdin="\n")
    assert refused.returncode != 0 and "password of at least" in refused.stderr, refused.stderr


def test_a_token_name_with_surrounding_spaces_is_refused_with_the_rule(admin: Client) -> None:
    refused = admin.post("/api/tokens", json={"name": " ci-spaced", "role": "viewer"})
    assert refused.status_code == 422, refused.text
    assert NAME_RULE in refused.json()["detail"], refused.text
