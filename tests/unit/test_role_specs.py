"""Every role's meta/argument_specs.yml and defaults/main.yml describe the same options with the same defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from helpers import REPO

ROLES = sorted(p.parent.parent for p in (REPO / "roles").glob("*/defaults/main.yml"))


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_argument_specs_match_defaults(role: Path) -> None:
    defaults = load(role / "defaults" / "main.yml")
    spec_file = role / "meta" / "argument_specs.yml"
    assert spec_file.exists(), f"{role.name} has no meta/argument_specs.yml"
    options = load(spec_file)["argument_specs"]["main"]["options"]
    assert sorted(options) == sorted(defaults), f"{role.name}: options and defaults name different variables"
    for name, spec in options.items():
        assert "type" in spec and spec.get("description"), f"{role.name}: {name} needs a type and a description"
        if "default" in spec:
            assert spec["default"] == defaults[name], f"{role.name}: {name} defaults differ"
        else:
            assert spec.get("required"), f"{role.name}: {name} has no default in the spec and is not required"


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_public_variables_carry_the_role_prefix(role: Path) -> None:
    prefix = role.name + "_"
    for name in load(role / "defaults" / "main.yml"):
        assert name.startswith(prefix), f"{role.name}: default {name} must start with {prefix}"
    vars_dir = role / "vars"
    for path in vars_dir.glob("*.yml") if vars_dir.exists() else []:
        for name in load(path):
            assert name.startswith("_" + prefix), f"{role.name}: {path.name} variable {name} must start with _{prefix}"
