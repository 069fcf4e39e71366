"""The console's parts on their own: grid, redaction, registry client, retention, schema, config, CLI."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from conftest import CONSOLE, FIXTURES, REPOSITORY, SECRETS, TAGS, VAULT_PASSWORD, FakeRegistry, server_env
from fleetdeploy.console import config as configmod
from fleetdeploy.console.config import RegistryConfig
from fleetdeploy.console.db import Base, Job, JobEvent, make_engine, migrate
from fleetdeploy.console.domain.registry import RegistryClient, RegistryError
from fleetdeploy.console.redact import MASK, Redactor, vault_secrets
from fleetdeploy.console.runner.events import slim_event
from fleetdeploy.console.runner.grid import Grid
from fleetdeploy.console.runner.manager import JobManager
from fleetdeploy.console.runner.notify import Notifier, message


def ev(kind: str, host: str | None = None, **data: Any) -> dict[str, Any]:
    return {"event": kind, "event_data": {"host": host, **data} if host else data}


def test_grid_opens_a_column_per_batch_and_keeps_the_worst_state() -> None:
    g = Grid()
    g.plan(["a", "b", "c"])
    assert g.apply(ev("playbook_on_play_start", play="Deploy", play_uuid="1"))["column"]["batch"] == 1
    assert g.apply(ev("runner_on_start", "a", task="Pull"))["cell"] == {
        "host": "a", "col": 0, "state": "ok", "task": "Pull", "running": True}
    g.apply(ev("runner_on_ok", "a", task="Pull", res={"changed": True}))
    g.apply(ev("runner_on_ok", "a", task="Check", res={"changed": False}))
    g.apply(ev("runner_on_failed", "b", task="Pull", res={}, ignore_errors=True))
    assert g.apply(ev("playbook_on_play_start", play="Deploy", play_uuid="2"))["column"]["batch"] == 2
    g.apply(ev("runner_on_unreachable", "c", task="Pull", res={}))
    snap = g.snapshot()
    cells = {(c["host"], c["col"]): c["state"] for c in snap["cells"]}
    assert cells == {("a", 0): "changed", ("b", 0): "ok", ("c", 1): "unreachable"}
    assert snap["results"] == {"a": "changed", "b": "ok", "c": "unreachable"}
    g.apply(ev("playbook_on_stats", changed={"a": 1}, ok={"a": 2, "b": 1}, dark={"c": 1}, failures={}))
    assert g.host_results() == {"a": "changed", "b": "ok", "c": "unreachable"}
    assert g.recap["c"]["dark"] == 1


def test_redactor_masks_known_values_secret_keys_and_no_log_results() -> None:
    red = Redactor(["hunter2-long", "abc"])  # too short to mask safely: ignored
    out = red.value({
        "stdout": "password is hunter2-long, abc",
        "res": {"db_password": "x1", "api_token": 42, "nested": [{"msg": "hunter2-long"}],
                "invocation": {"module_args": {"secret": "y"}}},
        "other": {"_ansible_no_log": True, "stdout": "hunter2-long"},
    })
    assert out["stdout"] == f"password is {MASK}, abc"
    assert out["res"] == {"db_password": MASK, "api_token": MASK, "nested": [{"msg": MASK}]}
    assert "hunter2-long" not in str(out["other"])
    # A mapping under a secret's key (a service's secret_env, deploy_secrets) is masked whole, its shape kept.
    nested = red.value({"res": {"secret_env": {"DATABASE_URL": "postgres://u:p@db/x"},
                                "deploy_secrets": {"demo": {"API_KEY": "k-12345", "PORT": 5}}}})
    assert nested["res"] == {"secret_env": {"DATABASE_URL": MASK}, "deploy_secrets": {"demo": {"API_KEY": MASK, "PORT": MASK}}}


def test_slim_event_keeps_what_the_view_needs_and_masks_the_rest() -> None:
    raw = {"counter": 3, "event": "runner_on_ok", "created": "t", "uuid": "u", "pid": 1,
           "stdout": f"ok: [web1] => {SECRETS['vault_fixture_secret']}",
           "event_data": {"host": "web1", "task": "T", "res": {"changed": True, "msg": "m", "stdout": "big",
                                                                 "ansible_facts": {"x": 1}},
                          "task_args": "password=1", "remote_addr": "10.0.0.1"}}
    slim = slim_event(raw, Redactor([SECRETS["vault_fixture_secret"]]))
    assert slim["stdout"] == f"ok: [web1] => {MASK}"
    assert slim["event_data"] == {"host": "web1", "task": "T", "res": {"changed": True, "msg": "m"}}


def test_secret_extra_vars_are_told_by_their_name_or_write_only_in_the_schema() -> None:
    from fleetdeploy.console.redact import secret_extra_vars

    schema = {"type": "object", "properties": {"pin": {"type": "string", "writeOnly": True}, "release": {}}}
    extra = {"api_token": "t", "db_password": "p", "pin": "1234", "release": "v1", "batch": 2}
    assert secret_extra_vars(extra, schema) == {"api_token", "db_password", "pin"}


def test_vault_values_are_found_in_vault_files_and_inline_strings() -> None:
    found = vault_secrets([FIXTURES / "inventories" / "fleet"], VAULT_PASSWORD).values
    assert {SECRETS["vault_fixture_secret"], SECRETS["vault_inline_token"], VAULT_PASSWORD} <= found


def test_registry_client_follows_pages_and_reports_refusals(registry: FakeRegistry) -> None:
    good = RegistryClient(RegistryConfig(url=registry.url, username="ci", password_value=SECRETS["registry_password"]))
    assert good.tags(REPOSITORY) == TAGS
    assert sum("last=" in r for r in registry.requests) >= 2, "pagination (Link: rel=next) was not followed"
    with pytest.raises(RegistryError, match="no repository"):
        good.tags("fleetdeploy/nothing")
    bad = RegistryClient(RegistryConfig(url=registry.url, username="ci", password_value="wrong"))
    with pytest.raises(RegistryError, match="refused the credentials"):
        bad.tags(REPOSITORY)
    down = RegistryClient(RegistryConfig(url="https://127.0.0.1:9", timeout=1))
    with pytest.raises(RegistryError, match="did not answer"):
        down.tags(REPOSITORY)


def test_migrations_build_exactly_the_models(tmp_path: Path) -> None:
    from alembic.config import Config as AlembicConfig
    from alembic.script import ScriptDirectory

    from fleetdeploy.console.db import HEAD, MIGRATIONS, current_revision

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    assert ScriptDirectory.from_config(cfg).get_current_head() == HEAD
    url = f"sqlite:///{tmp_path / 'c.db'}"
    assert current_revision(url) is None
    migrate(url)
    assert current_revision(url) == HEAD
    migrate(url)  # idempotent
    with make_engine(url).connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []


def test_retention_prunes_old_and_surplus_jobs(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    migrate(url)
    cfg = configmod.load(None, database=url, data_dir=tmp_path)
    cfg = dataclasses.replace(cfg, retention_days=7, retention_jobs=3)
    from sqlalchemy.orm import sessionmaker

    sessions = sessionmaker(make_engine(url), expire_on_commit=False)
    with sessions() as db:
        for i in range(6):
            created = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - dt.timedelta(days=30 if i == 3 else 0)
            db.add(Job(id=i + 1, environment="e", action="deploy", playbook="p", extra_vars={}, launched_by="u",
                       status="successful", created_at=created, events_pruned=False))
            db.add(JobEvent(job_id=i + 1, counter=1, event="x", data={}))
            (tmp_path / "runs" / str(i + 1)).mkdir(parents=True)
        db.commit()
    pruned = JobManager(cfg, sessions, Notifier(None)).prune()
    assert sorted(pruned) == [1, 2, 3, 4]  # 1-3 beyond the newest three, 4 older than a week
    assert not (tmp_path / "runs" / "1").exists() and (tmp_path / "runs" / "5").exists()
    with sessions() as db:
        assert {e.job_id for e in db.query(JobEvent)} == {5, 6}


def test_config_file_errors_name_the_place(tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    path.write_text("environments:\n  prod: {inventory: 3}\n")
    with pytest.raises(configmod.ConfigError, match="environments/prod/inventory"):
        configmod.load(path)
    path.write_text("actions:\n  deploy: {playbook: x.yml, extra_vars_schema: {type: wrong}}\n")
    with pytest.raises(configmod.ConfigError, match="extra_vars_schema"):
        configmod.load(path)
    path.write_text("environments:\n  prod: {inventory: i, approval: {actions: [deploy, deplyo]}}\n")
    with pytest.raises(configmod.ConfigError, match=r"environments/prod/approval/actions: unknown action\(s\) deplyo"):
        configmod.load(path)
    path.write_text("environments:\n  prod: {inventory: i, approval: {timeout_minutes: 0}}\n")
    with pytest.raises(configmod.ConfigError, match="environments/prod/approval/timeout_minutes"):
        configmod.load(path)
    # Every action, an hour, when the approval says no more.
    path.write_text("environments:\n  prod: {inventory: i, approval: {}}\n  dev: {inventory: i}\n")
    loaded = configmod.load(path)
    assert loaded.environments["prod"].approval_actions == ("deploy", "rollback", "provision")
    assert loaded.environments["prod"].approval_timeout_minutes == 60
    assert not loaded.environments["dev"].needs_approval("deploy")
    # A key written with no value is refused, not read as left out: approvals and the registry's tag check
    # must not be turned off by an empty line.
    for text, place in (("environments:\n  prod:\n    inventory: i\n    approval:\n", "environments/prod"),
                        ("registry:\n", "registry"), ("security:\n  trusted_proxies:\n", "security")):
        path.write_text(text)
        with pytest.raises(configmod.ConfigError, match=place) as refused:
            configmod.load(path)
        assert "written with no value" in str(refused.value), refused.value


def test_database_urls_sqlite_or_postgresql_through_psycopg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert configmod.database_url("postgres://ops@db:5433/console") == "postgresql+psycopg://ops@db:5433/console"
    url = configmod.database_url("postgresql://ops@db/console", "p@ss:/word")
    assert url == "postgresql+psycopg://ops:p%40ss%3A%2Fword@db/console"
    assert configmod.shown_database(url) == "postgresql+psycopg://ops:***@db/console"
    for bad, message in (("mysql://ops@db/console", "mysql is not supported"),
                         ("postgresql+psycopg2://ops@db/c", "postgresql.psycopg2 is not supported"),
                         ("no url at all", "not a database URL")):
        with pytest.raises(configmod.ConfigError, match=message):
            configmod.database_url(bad)
    with pytest.raises(configmod.ConfigError, match="SQLite database takes no password"):
        configmod.database_url("sqlite:///x.db", "secret")

    path = tmp_path / "c.yml"
    (tmp_path / "pw").write_text("from-a-file\n")
    path.write_text("database: postgresql://ops@db/console\ndatabase_password_file: pw\n")
    cfg = configmod.load(path)
    assert cfg.database == "postgresql+psycopg://ops:from-a-file@db/console"
    assert "from-a-file" not in repr(cfg) and cfg.database_shown == "postgresql+psycopg://ops:***@db/console"
    path.write_text("database: postgresql://ops@db/console\ndatabase_password_env: TEST_DB_PW\n")
    with pytest.raises(configmod.ConfigError, match="TEST_DB_PW is not set"):
        configmod.load(path)
    monkeypatch.setenv("TEST_DB_PW", "from-the-environment")
    cfg = configmod.load(path)
    assert cfg.database.endswith(":from-the-environment@db/console")
    configmod.scrub_environment(cfg)
    assert "TEST_DB_PW" not in os.environ
    path.write_text("database_password_env: A\ndatabase_password_file: pw\n")
    with pytest.raises(configmod.ConfigError, match="give one of them"):
        configmod.load(path)
    path.write_text("environments:\n  " + "e" * 65 + ": {inventory: x}\n")
    with pytest.raises(configmod.ConfigError, match="too long"):
        configmod.load(path)


def test_default_config_maps_the_checkout(tmp_path: Path) -> None:
    cfg = configmod.load(None, data_dir=tmp_path)
    assert {"local", "staging", "prod"} <= set(cfg.environments)
    assert cfg.environments["prod"].inventory == configmod.REPO / "inventories" / "prod"
    assert cfg.actions["deploy"].playbook == configmod.REPO / "deploy.yml"
    assert cfg.actions["provision"].playbook.name == "site.yml" and cfg.actions["provision"].role == "admin"
    assert cfg.database == f"sqlite:///{tmp_path / 'console.db'}"


def test_notification_payload_is_slack_compatible() -> None:
    job = {"id": 7, "action": "deploy", "environment": "prod", "release": "v2", "status": "failed",
           "launched_by": "ana"}
    payload = message(job, "https://console.example")
    assert payload["text"].startswith(":x: deploy of prod to v2 failed by ana")
    assert "<https://console.example/jobs/7|job 7>" in payload["text"]


def test_cli_create_user_reads_the_password_from_stdin_and_refuses_duplicates(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'cli.db'}"

    def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(CONSOLE), *args, "--database", db], input=stdin, capture_output=True, text=True,
                              env=server_env(), timeout=60, check=False)

    assert run("create-user", "ana", "--role", "deployer", "--password-stdin", stdin="short\n").returncode != 0
    ok = run("create-user", "ana", "--role", "deployer", "--environments", "staging", "--password-stdin",
             stdin="a-long-enough-password\n")
    assert ok.returncode == 0 and "deployer on staging" in ok.stdout
    again = run("create-user", "ana", "--role", "admin", "--password-stdin", stdin="a-long-enough-password\n")
    assert again.returncode != 0 and "exists" in again.stderr
    assert run("migrate").returncode == 0


def test_the_lab_example_config_maps_the_checkout() -> None:
    cfg = configmod.load(configmod.REPO / "fleetdeploy" / "console" / "examples" / "lab.yml")
    assert cfg.project_dir == configmod.REPO
    assert cfg.environments["local"].inventory == configmod.REPO / "inventories" / "local"
    assert cfg.actions["deploy"].playbook == configmod.REPO / "deploy.yml"
    assert cfg.actions["deploy"].release is not None and cfg.actions["deploy"].release.repository == "web"
    assert cfg.registry is not None and cfg.registry.url == "https://127.0.0.1:5443"


def test_a_sweep_kills_only_its_own_consoles_job() -> None:
    """Two consoles on one machine (staging's and prod's) both have a job 1: each sweep leaves the other's alone."""
    import os
    import signal

    from fleetdeploy.console.runner.process import JOB_MARKER, job_marker, job_processes, kill_job_processes

    ours, theirs = job_marker("sqlite:////srv/a/console.db", 1), job_marker("sqlite:////srv/b/console.db", 1)
    assert ours != theirs
    procs = {m: subprocess.Popen(["sleep", "60"], env={**os.environ, JOB_MARKER: m}, start_new_session=True)
             for m in (ours, theirs)}
    try:
        assert kill_job_processes(ours) == [procs[ours].pid]
        assert procs[ours].wait(timeout=10) == -signal.SIGKILL
        # Under a loaded suite (CI's three workers), twice the other console's live process was not found by
        # the scan right after the sweep; the cause is not known. Its marker is looked for again for up to
        # 5 s: the test still fails if the sweep killed it or the scan never sees it.
        deadline = time.monotonic() + 5
        while (found := job_processes(theirs)) != [procs[theirs].pid] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert procs[theirs].poll() is None
        assert found == [procs[theirs].pid]
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()


def test_nobody_grants_a_role_or_scope_wider_than_their_own() -> None:
    from fleetdeploy.console.security import CLI_PRINCIPAL, Principal

    scoped = Principal("ana", "admin", ("staging",))
    assert scoped.why_not_grant("admin", ["staging"]) is None
    assert scoped.why_not_grant("deployer", ["staging"]) is None
    for role, envs in (("admin", None), ("viewer", None), ("deployer", ["prod"]), ("viewer", ["staging", "prod"]),
                       ("alertmanager", ["staging"])):
        assert scoped.why_not_grant(role, envs), (role, envs)
    everywhere = Principal("root", "admin", None)
    assert everywhere.why_not_grant("admin", None) is None and everywhere.why_not_grant("alertmanager", None) is None
    assert Principal("dee", "deployer", None).why_not_grant("viewer", ["staging"])
    # The command line is run by root on the console's host: an admin of every environment.
    assert CLI_PRINCIPAL.environments is None and CLI_PRINCIPAL.role == "admin"


def test_login_limiter_memory_is_bounded() -> None:
    from fleetdeploy.console.security import LoginLimiter, login_keys

    limiter = LoginLimiter(attempts=5, window=300, max_keys=1000)
    for i in range(20_000):
        keys = login_keys("198.51.100.1", f"random-name-{i}")
        if not limiter.blocked(*keys):
            limiter.fail(*keys)
    assert len(limiter) <= 1000
    assert limiter.blocked(*login_keys("198.51.100.1", "anyone")) > 0  # the address is still held to its limit
    for i in range(20_000):
        limiter.fail(*login_keys(f"10.{i // 256 % 256}.{i % 256}.1", f"n{i}"))
    assert len(limiter) <= 1000


def test_built_in_actions_take_only_what_a_deployer_should_choose(tmp_path: Path) -> None:
    from fleetdeploy.console.security import Principal
    from fleetdeploy.console.domain.console import Console
    from fleetdeploy.console.domain.errors import ConsoleError

    cfg = configmod.load(None, data_dir=tmp_path)
    for action in cfg.actions.values():
        assert action.extra_vars_schema.get("additionalProperties") is False, action.name
    console = Console(cfg)
    ana = Principal("ana", "deployer", None)
    ok = console.validate_launch(ana, "staging", "deploy", "v1.2.0", {
        "deploy_release_overrides": {"web": "v1.1.0"}, "deploy_serial": [1, "50%"], "deploy_note": "hotfix"})
    assert ok.extra_vars["release"] == "v1.2.0"
    console.validate_launch(ana, "staging", "rollback", None, {"deploy_serial": 2})
    for bad in ({"fleetdeploy_registry": "evil.example:5000"},
                {"deploy_services": [{"name": "web", "image": "evil/web", "volumes": ["/:/host"]}]},
                {"deploy_actor": "someone-else"}, {"deploy_auto_rollback": False},
                {"deploy_release_overrides": {"web": "../x"}}, {"deploy_release_overrides": {"web": 3}},
                {"deploy_serial": 0}, {"deploy_serial": 1000}, {"deploy_serial": "150%"},
                {"deploy_note": "x" * 501}):
        with pytest.raises(ConsoleError) as refused:
            console.validate_launch(ana, "staging", "deploy", "v1.2.0", bad)
        assert refused.value.status == 422, bad
    # Whatever an admin's own action allows, the actor comes from the signed-in principal only.
    path = tmp_path / "c.yml"
    path.write_text(f"project_dir: {configmod.REPO}\nactions:\n  open: {{playbook: deploy.yml, role: deployer}}\n")
    with pytest.raises(ConsoleError, match="says who runs the job"):
        Console(configmod.load(path, data_dir=tmp_path)).validate_launch(ana, "staging", "open", None,
                                                                         {"deploy_actor": "someone-else"})


def test_every_job_status_is_named_once_and_shown_everywhere() -> None:
    from fleetdeploy.console import status
    from fleetdeploy.console.runner.notify import ICON
    from fleetdeploy.console.web.pages import STATUS_CLASS

    assert len(set(status.ALL)) == len(status.ALL) and set(status.FINAL) | set(status.ACTIVE) < set(status.ALL)
    assert set(STATUS_CLASS) == set(status.ALL)  # every status has its badge on the pages
    # Chat hears of a job when it waits for an approval, starts and ends; a queued job is not announced.
    assert set(ICON) == set(status.ALL) - {status.QUEUED}
