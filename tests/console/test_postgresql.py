"""The console on a real PostgreSQL: schema, users, tokens, jobs, alerts and a crash, as on SQLite.

PostgreSQL is Debian's, installed into a throw-away container from the lab's Debian 12 host image
(`make test` builds it) and published on 127.0.0.1 only. The password reaches the console through
`database_password_env`, never a command line, and must not reach a job's processes.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import cli, job_processes, process_environ, start_server, wait_for_long_task, write_config
from sqlalchemy import text

from fleetdeploy.console.config import database_url
from fleetdeploy.console.db import HEAD, make_engine

pytestmark = pytest.mark.slow

IMAGE = "fleetdeploy/host:debian12"
CONTAINER = f"{os.environ.get('FD_MOLECULE_PREFIX', 'fd')}-console-postgresql"
PASSWORD_ENV = "TEST_CONSOLE_DATABASE_PASSWORD"
PASSWORD = f"pg-{secrets.token_hex(12)}"

# Debian's postgresql in a container that has no init: the cluster is started by hand, listens on
# every address of the container and asks for a password (scram-sha-256) from outside it.
SETUP = f"""set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends postgresql >/dev/null
version=$(ls /etc/postgresql)
pg_conftool "$version" main set listen_addresses '*'
echo 'host all all 0.0.0.0/0 scram-sha-256' >> "/etc/postgresql/$version/main/pg_hba.conf"
pg_ctlcluster "$version" main stop 2>/dev/null || true
pg_ctlcluster "$version" main start
su postgres -c "psql -q -v ON_ERROR_STOP=1 -c \\"CREATE ROLE console LOGIN PASSWORD '$PGPW'\\""
su postgres -c "createdb -O console console"
"""


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """The URL of an empty database `console`, owned by a role of that name; the password is in PASSWORD_ENV."""
    subprocess.run(["docker", "rm", "-f", CONTAINER], capture_output=True, check=False)
    subprocess.run(["docker", "run", "-d", "--name", CONTAINER, "--label", "fleetdeploy.test=console-postgresql",
                    "-p", "127.0.0.1::5432", "--entrypoint", "sleep", IMAGE, "infinity"],
                   capture_output=True, check=True)
    try:
        done = subprocess.run(["docker", "exec", "-e", f"PGPW={PASSWORD}", CONTAINER, "bash", "-c", SETUP],
                              capture_output=True, text=True, timeout=600, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        port = subprocess.run(["docker", "port", CONTAINER, "5432/tcp"], capture_output=True, text=True,
                              check=True).stdout.split()[0].rsplit(":", 1)[1]
        os.environ[PASSWORD_ENV] = PASSWORD  # server_env() copies os.environ
        yield f"postgresql://console@127.0.0.1:{port}/console"
    finally:
        os.environ.pop(PASSWORD_ENV, None)
        subprocess.run(["docker", "rm", "-f", CONTAINER], capture_output=True, check=False)


def pg_config(root: Path, registry_url: str, url: str) -> Path:
    config = write_config(root, registry_url, None)
    settings = json.loads(config.read_text())
    settings.update(database=url, database_password_env=PASSWORD_ENV)
    config.write_text(json.dumps(settings, indent=2))
    return config


def test_the_console_runs_on_postgresql(postgres: str, registry: Any, tmp_path: Path) -> None:
    config = pg_config(tmp_path, registry.url, postgres)
    migrated = cli(config, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert "postgresql+psycopg://console:***@127.0.0.1" in migrated.stdout
    assert PASSWORD not in migrated.stdout + migrated.stderr
    with make_engine(database_url(postgres, PASSWORD)).connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == HEAD
        assert conn.execute(text("SELECT current_setting('server_version_num')::int")).scalar() >= 150000
    assert cli(config, "migrate").returncode == 0  # at the newest schema already: nothing to do

    made = cli(config, "create-user", "ops", "--role", "deployer", "--password-stdin", stdin="ops-password-1234\n")
    assert made.returncode == 0, made.stderr
    again = cli(config, "create-user", "ops", "--role", "deployer", "--password-stdin", stdin="ops-password-1234\n")
    assert again.returncode != 0 and "exists" in again.stderr
    too_long = cli(config, "create-user", "x" * 65, "--role", "viewer", "--password-stdin", stdin="p" * 12 + "\n")
    assert too_long.returncode == 2 and "1 to 64 characters" in too_long.stderr
    token = cli(config, "create-token", "ops", "--role", "deployer").stdout.strip()
    alerts_token = cli(config, "create-token", "am", "--role", "alertmanager").stdout.strip()

    first = start_server(tmp_path, config)
    try:
        api = httpx.Client(base_url=first.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        deployed = api.post("/api/jobs", json={"environment": "fleet", "action": "deploy", "release": "v1.2.0",
                                               "extra_vars": {"fixture_step": 0}})
        assert deployed.status_code == 201, deployed.text
        job_id = deployed.json()["id"]
        deadline = time.monotonic() + 180
        while (job := api.get(f"/api/jobs/{job_id}").json())["status"] in ("queued", "running"):
            assert time.monotonic() < deadline, job
            time.sleep(0.5)
        assert job["status"] == "successful", job
        assert sorted(job["hosts"]) == [f"web{i}" for i in range(1, 7)]
        assert job["recap"]["web1"]["changed"] == 1
        assert len(api.get(f"/api/jobs/{job_id}/events").text.split("\n\n")) > 20

        # An Alertmanager webhook whose labels are longer than their columns is stored, not a 500.
        alert = {"version": "4", "status": "firing", "alerts": [{
            "status": "firing", "fingerprint": "f" * 200, "labels": {"alertname": "A" * 300, "environment": "e" * 100,
                                                                     "severity": "s" * 50},
            "annotations": {"summary": "disk"}, "startsAt": "2026-11-26T10:00:00.123456789+00:00" + "0" * 20}]}
        posted = httpx.post(f"{first.url}/api/alerts", json=alert, timeout=30,
                            headers={"Authorization": f"Bearer {alerts_token}"})
        assert posted.status_code < 300, posted.text

        soak = api.post("/api/jobs", json={"environment": "fleet", "action": "soak"}).json()["id"]
        refused = api.post("/api/jobs", json={"environment": "fleet", "action": "soak"})
        assert refused.status_code == 409 and f"job {soak}" in refused.json()["detail"]
        wait_for_long_task(config, soak)
        for pid in job_processes(config, soak):
            assert PASSWORD.encode() not in process_environ(pid), f"the database password is in process {pid}'s environment"
    finally:
        first.stop(signal.SIGKILL)  # a crash: the job is left "running" in the database

    second = start_server(tmp_path, config)
    try:
        api = httpx.Client(base_url=second.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        job = api.get(f"/api/jobs/{soak}").json()
        assert job["status"] == "interrupted" and "console stopped" in job["explanation"]
        assert job_processes(config, soak) == []
        assert api.post("/api/jobs", json={"environment": "fleet", "action": "soak"}).status_code == 201
    finally:
        second.stop()
    assert PASSWORD not in second.log.read_text()


def test_a_database_it_cannot_use_is_one_clear_line(postgres: str, registry: Any, tmp_path: Path) -> None:
    config = pg_config(tmp_path, registry.url, postgres)
    env_password = os.environ[PASSWORD_ENV]
    os.environ[PASSWORD_ENV] = "not-the-password"
    try:
        wrong = cli(config, "migrate")
    finally:
        os.environ[PASSWORD_ENV] = env_password
    assert wrong.returncode == 1
    assert wrong.stderr.startswith("fleetdeploy-console: cannot use the database postgresql+psycopg://console:***@")
    assert "password authentication failed" in wrong.stderr and "Traceback" not in wrong.stderr
    assert "not-the-password" not in wrong.stderr

    unsupported = cli(config, "migrate", "--database", "mysql://console@127.0.0.1/console")
    assert unsupported.returncode == 1 and "mysql is not supported" in unsupported.stderr
