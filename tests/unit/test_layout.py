"""The repository's shape: thin entry points, the config that the rest relies on, the same inventory shape."""

from __future__ import annotations

import configparser
import re

import pytest
import yaml

from helpers import REPO

ENTRY_POINTS = ["site.yml", "deploy.yml", "rollback.yml", "promote.yml"]


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_entry_points_only_import_playbooks(name: str) -> None:
    plays = yaml.safe_load((REPO / name).read_text())
    assert plays, f"{name} is empty"
    for play in plays:
        assert set(play) - {"name"} == {"ansible.builtin.import_playbook"}, f"{name}: {play}"
        assert (REPO / play["ansible.builtin.import_playbook"]).exists()
        assert play["ansible.builtin.import_playbook"].startswith("playbooks/")


def test_ansible_cfg_settings_the_project_relies_on() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "ansible.cfg")
    defaults = cfg["defaults"]
    assert defaults["inventory"] == "./inventories/local"
    assert defaults["roles_path"] == "./roles"
    assert defaults.getboolean("inject_facts_as_vars") is False
    assert defaults.getboolean("host_key_checking") is True
    assert defaults["fact_caching"] == "jsonfile"
    ssh = cfg["ssh_connection"]
    assert ssh.getboolean("pipelining") is True
    assert "ControlPersist" in ssh["ssh_args"]


@pytest.mark.parametrize("env", ["staging", "prod"])
def test_aws_inventories_key_groups_on_tags(env: str) -> None:
    config = yaml.safe_load((REPO / "inventories" / env / "aws_ec2.yml").read_text())
    assert config["plugin"] == "amazon.aws.aws_ec2"
    assert config["filters"]["tag:fleetdeploy_environment"] == env


def test_every_inventory_has_the_same_group_vars_shape() -> None:
    shapes = {
        env: sorted(p.relative_to(REPO / "inventories" / env).as_posix()
                    for p in (REPO / "inventories" / env / "group_vars").rglob("*.yml")
                    if p.parent.name != "all" or p.name != "connection.yml")
        for env in ("local", "staging", "prod")
    }
    assert shapes["staging"] == shapes["prod"]
    assert shapes["local"] == shapes["prod"]


def test_requirements_pin_the_collections_the_ansible_package_bundles() -> None:
    import json
    import subprocess

    listed = subprocess.run(
        [str(REPO / ".venv/bin/ansible-galaxy"), "collection", "list", "--format", "json"],
        capture_output=True, text=True, check=True,
    ).stdout
    bundled: dict[str, str] = {}
    for collections in json.loads(listed).values():
        for name, info in collections.items():
            bundled.setdefault(name, info["version"])
    required = yaml.safe_load((REPO / "requirements.yml").read_text())["collections"]
    for entry in required:
        assert entry["name"] in bundled, entry["name"]
        assert entry["version"] == bundled[entry["name"]], entry


def test_the_production_build_carries_no_test_knob() -> None:
    """A deliberately failing release is built only by tests/fixtures/unhealthy_demo: the playbooks, roles,
    inventories and service Dockerfiles have no switch that makes an image unhealthy."""
    production = [*REPO.glob("*.yml"), *REPO.glob("playbooks/**/*.yml"), *REPO.glob("roles/**/*.yml"),
                  *REPO.glob("roles/**/*.j2"), *REPO.glob("inventories/**/*.yml"), *REPO.glob("services/*/Dockerfile")]
    assert (REPO / "playbooks" / "build.yml") in production
    knobs = [p.relative_to(REPO).as_posix() for p in production if "demo_unhealthy" in p.read_text().lower()]
    assert knobs == []


def test_the_stub_status_port_is_one_number_in_the_fleets_wiring() -> None:
    """nginx serves stub_status where the nginx exporter reads it: site.yml hands both roles the one port in
    playbooks/vars/wiring.yml, no inventory papers over a mismatch, and the roles' own defaults agree."""
    port = yaml.safe_load((REPO / "playbooks" / "vars" / "wiring.yml").read_text())["fleetdeploy_stub_status_port"]
    nginx = yaml.safe_load((REPO / "roles" / "nginx" / "defaults" / "main.yml").read_text())
    exporters = yaml.safe_load((REPO / "roles" / "exporters" / "defaults" / "main.yml").read_text())
    assert nginx["nginx_stub_status_port"] == port
    assert exporters["exporters_nginx_status_url"] == f"http://127.0.0.1:{port}/stub_status"
    plays = {play["name"]: play for play in yaml.safe_load((REPO / "playbooks" / "site.yml").read_text())}
    role_vars = {role["role"]: (play, role.get("vars", {})) for play in plays.values() for role in play.get("roles", [])}
    for role, variable, expected in (
            ("nginx", "nginx_stub_status_port", "{{ fleetdeploy_stub_status_port }}"),
            ("exporters", "exporters_nginx_status_url", "http://127.0.0.1:{{ fleetdeploy_stub_status_port }}/stub_status")):
        play, given = role_vars[role]
        assert "vars/wiring.yml" in play.get("vars_files", []), role
        assert given.get(variable) == expected, role
    for path in (REPO / "inventories").rglob("*.yml"):
        text = path.read_text()
        assert "nginx_stub_status_port" not in text and "exporters_nginx_status_url" not in text, path


def test_every_firewall_drop_in_goes_through_the_common_roles_one_task_file() -> None:
    """Each role's <role>.nft template is written by roles/common/tasks/firewall_dropin.yml (checked, then
    loaded by the guarded handler chain), and no role writes into /etc/nftables.d by itself."""
    templates = sorted(p for p in REPO.glob("roles/*/templates/*.nft.j2") if p.parts[-3] != "common")
    assert templates, "no role declares a firewall drop-in"
    for template in templates:
        role = template.parts[-3]
        calls = [task for path in (REPO / "roles" / role / "tasks").glob("*.yml")
                 for task in yaml.safe_load(path.read_text()) or []
                 if task.get("ansible.builtin.include_role", {}).get("tasks_from") == "firewall_dropin.yml"]
        assert [call["vars"]["common_firewall_dropin_template"] for call in calls] == [template.name], role
        assert all(call["ansible.builtin.include_role"] == {
            "name": "common", "tasks_from": "firewall_dropin.yml", "handlers_from": "firewall.yml"} for call in calls), role
    for path in REPO.glob("roles/*/tasks/*.yml"):
        if path.parts[-3] == "common":
            continue
        for task in yaml.safe_load(path.read_text()) or []:
            for module in ("ansible.builtin.template", "ansible.builtin.copy"):
                dest = str((task.get(module) or {}).get("dest", ""))
                assert "nftables.d" not in dest and not dest.endswith(".nft"), f"{path}: {task.get('name')}"


def test_a_new_release_reuses_every_layer_of_the_one_before() -> None:
    """The build passes RELEASE as a build argument, and a RUN below an ARG is built again whenever the
    argument changes: every service's Dockerfile declares RELEASE after its last RUN, so building a new
    release builds only its changed files (the web image's apt and pip layers took 30 s more for each)."""
    dockerfiles = sorted(REPO.glob("services/*/Dockerfile"))
    assert len(dockerfiles) >= 4
    late = {}
    for dockerfile in dockerfiles:
        lines = [line.strip().upper() for line in dockerfile.read_text().splitlines()]
        last_stage = max(i for i, line in enumerate(lines) if line.startswith("FROM "))
        declared = [i for i, line in enumerate(lines) if re.match(r"ARG\s+RELEASE(=|\s|$)", line) and i > last_stage]
        runs = [i for i, line in enumerate(lines) if line.startswith("RUN ")]
        late[dockerfile.parent.name] = len(declared) == 1 and declared[0] > max(runs, default=-1)
    assert late == dict.fromkeys(late, True)
