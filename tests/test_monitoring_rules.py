"""The monitoring role's alert rules, Prometheus and Alertmanager configurations, and the Grafana dashboards.

The role's templates are rendered with its defaults (monitoring/tests/render.yml), then checked by the
tools the monitor host runs: `promtool check rules/config`, `promtool test rules` with the unit tests
in monitoring/tests/, and `amtool check-config`. The tools come from Debian's packages; where they are
not installed, the fixture unpacks them from the .deb files into .cache/prometheus-tools (no service
is installed or started on this machine).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from helpers import REPO, debian_tool, playbook

MONITORING = REPO / "monitoring"
DASHBOARDS = sorted((MONITORING / "dashboards").glob("*.json"))
# What the dashboards' Grafana variables stand for when a query is checked or run.
# The multi-host scenario (molecule/monitoring/verify.yml) substitutes the same values.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "5m", "$host": ".*", "$proxy": ".*"}


@pytest.fixture(scope="session")
def promtool() -> Path:
    return debian_tool("promtool")


@pytest.fixture(scope="session")
def amtool() -> Path:
    return debian_tool("amtool")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The role's templates rendered with its defaults, and the rule unit tests beside the rules."""
    out = tmp_path_factory.mktemp("monitoring")
    playbook("monitoring/tests/render.yml", extra_vars={"render_dir": str(out)}).check()
    for test in (MONITORING / "tests").glob("*_test.yml"):
        shutil.copy(test, out / "rules" / test.name)
    return out


def tool(path: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(path), *map(str, args)], capture_output=True, text=True, check=False)


def alert_names(rules_file: Path) -> list[str]:
    groups = yaml.safe_load(rules_file.read_text())["groups"]
    return [rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule]


def test_rules_are_valid(rendered: Path, promtool: Path) -> None:
    result = tool(promtool, "check", "rules", rendered / "rules" / "fleetdeploy.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_rules_the_issue_asks_for_are_shipped(rendered: Path) -> None:
    assert set(alert_names(rendered / "rules" / "fleetdeploy.yml")) >= {
        "HostDown", "DiskWillFillSoon", "MemoryPressure", "LoadBalancer5xxRatioHigh",
        "AppHostOutOfLoadBalancer", "HealthProbeFailing", "CertificateExpiringSoon", "RegistryDown",
        "PostgresDown", "PostgresConnectionsNearLimit", "RedisDown", "RedisConnectionsNearLimit", "RedisPersistenceFailing",
    }


def test_every_alert_has_a_unit_test_where_it_fires_and_one_where_it_does_not(rendered: Path) -> None:
    cases: dict[str, dict[str, int]] = {}
    for test_file in (rendered / "rules").glob("*_test.yml"):
        for test in yaml.safe_load(test_file.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                seen = cases.setdefault(case["alertname"], {"fires": 0, "quiet": 0})
                seen["fires" if case.get("exp_alerts") else "quiet"] += 1
    for alert in alert_names(rendered / "rules" / "fleetdeploy.yml"):
        assert cases.get(alert, {}).get("fires"), f"no unit test shows {alert} firing"
        assert cases.get(alert, {}).get("quiet"), f"no unit test shows {alert} staying quiet"


def test_rule_unit_tests_pass(rendered: Path, promtool: Path) -> None:
    tests = sorted((rendered / "rules").glob("*_test.yml"))
    assert tests
    result = tool(promtool, "test", "rules", *tests)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("discovery", ["file", "ec2"])
def test_prometheus_configuration_is_valid(rendered: Path, promtool: Path, discovery: str) -> None:
    result = tool(promtool, "check", "config", rendered / discovery / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ec2_discovery_keeps_only_the_instances_of_each_job_groups(rendered: Path) -> None:
    defaults = yaml.safe_load((REPO / "roles" / "monitoring" / "defaults" / "main.yml").read_text())
    jobs = {job["job_name"]: job for job in yaml.safe_load((rendered / "ec2" / "prometheus.yml").read_text())["scrape_configs"]}
    for job in defaults["monitoring_scrape_jobs"] + defaults["monitoring_probes"]:
        name = job["name"] if job in defaults["monitoring_scrape_jobs"] else f"probe_{job['name']}"
        config = jobs[name]
        assert "file_sd_configs" not in config
        sd = config["ec2_sd_configs"][0]
        assert sd["port"] == job["port"]
        assert {"name": "tag:fleetdeploy_environment", "values": ["prod"]} in sd["filters"]
        keeps = [r for r in config["relabel_configs"] if r.get("action") == "keep"]
        if "all" in job["groups"]:
            assert not keeps, name
        else:
            assert [r["source_labels"] for r in keeps] == [["__meta_ec2_tag_fleetdeploy_roles"]], name
            for group in job["groups"]:
                assert re.fullmatch(keeps[0]["regex"], f"ops, {group}"), (name, group)
            # An instance of another group only (monitor, or app for the jobs on monitor hosts) is dropped.
            outsider = "monitor" if "monitor" not in job["groups"] else "app"
            assert not re.fullmatch(keeps[0]["regex"], outsider), name


def test_alertmanager_configuration_is_valid_with_every_receiver(rendered: Path, amtool: Path) -> None:
    result = tool(amtool, "check-config", rendered / "alertmanager.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load((rendered / "alertmanager.yml").read_text())
    fleet = next(r for r in config["receivers"] if r["name"] == "fleet")
    assert fleet["webhook_configs"][0]["url"].endswith("/api/alerts/alertmanager")
    assert fleet["slack_configs"] and fleet["email_configs"]
    assert config["route"]["routes"][0]["receiver"] == "pager"
    assert {"alertname = HostDown"} == set(config["inhibit_rules"][0]["source_matchers"])


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_is_grafana_json_on_the_provisioned_data_source(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["panels"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in dashboard["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}, panel["title"]
        assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
    assert any("fleetdeploy_release_timestamp_seconds" in a["expr"] for a in dashboard["annotations"]["list"])


def test_the_dashboards_show_every_delivery_figure_and_mark_every_run() -> None:
    """Each series fleetdeploy/dora.py writes for the textfile collector is on a dashboard, and no dashboard
    asks for a fleetdeploy_dora_ series the script does not write (a renamed metric would leave a panel empty)."""
    from fleetdeploy import dora

    record = {"environment": "prod", "action": "deploy", "release": "v1", "run_id": "r", "started": "2026-12-01T10:00:00Z",
              "ended": "2026-12-01T10:00:00Z", "result": "ok", "hosts": {}, "images": {"web:v1": "sha256:1"}}
    exported = set(re.findall(r"^# TYPE (\w+) ", dora.as_prometheus(dora.figures([record], dora.parse_time("2026-12-02T00:00:00Z")),
                                                                    dora.last_runs([record])), re.MULTILINE))
    shown = set(re.findall(r"\b(fleetdeploy_(?:dora_\w+|run_end_timestamp_seconds))\b", " ".join(dashboard_queries())))
    assert len(exported) == 6 and shown == exported, (exported, shown)
    for path in DASHBOARDS:
        annotations = [a["expr"] for a in json.loads(path.read_text())["annotations"]["list"]]
        assert any("fleetdeploy_run_end_timestamp_seconds" in expr for expr in annotations), path.name


def test_dashboards_have_distinct_uids() -> None:
    uids = [json.loads(path.read_text())["uid"] for path in DASHBOARDS]
    assert len(DASHBOARDS) >= 2 and len(uids) == len(set(uids))


def dashboard_queries() -> list[str]:
    """Every PromQL query of every dashboard (panels, annotations, variables), variables substituted."""
    queries = []
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
        exprs += [a["expr"] for a in dashboard["annotations"]["list"]]
        exprs += [re.sub(r"^label_values\((.*), *\w+\)$", r"\1", v["query"]["query"]) for v in dashboard["templating"]["list"]]
        for expr in exprs:
            for name, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(name, value)
            queries.append(expr)
    return queries


def test_dashboard_queries_are_valid_promql(tmp_path: Path, promtool: Path) -> None:
    # promtool parses every expression of a rule file, so each query becomes a recording rule.
    rules = {"groups": [{"name": "dashboards", "rules": [
        {"record": f"dashboard:query_{i}", "expr": expr} for i, expr in enumerate(dashboard_queries())]}]}
    (tmp_path / "queries.yml").write_text(yaml.safe_dump(rules))
    result = tool(promtool, "check", "rules", tmp_path / "queries.yml")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("role", ["app_release", "exporters", "monitoring", "object_store", "postgresql", "redis"])
def test_role_readme_lists_every_option_of_the_argument_specs(role: str) -> None:
    options = yaml.safe_load((REPO / "roles" / role / "meta" / "argument_specs.yml").read_text())
    options = options["argument_specs"]["main"]["options"]
    rows = re.findall(r"^\| `(\w+)` \| (\S+) \|", (REPO / "roles" / role / "README.md").read_text(), re.MULTILINE)
    assert [name for name, _ in rows] == list(options), "README's variable table and argument_specs differ"
    for name, kind in rows:
        spec = options[name]
        assert kind == spec["type"] + (f"[{spec['elements']}]" if "elements" in spec else ""), name
