"""The tracking service's image, API and migration release task, on the shared PostgreSQL + Redis.

Built from the lab's Debian 12 host image as BASE_IMAGE, run as roles/app_release runs a service
(read-only root, tmpfs /tmp, no capabilities), configured by environment variables only.
"""

from __future__ import annotations

import http.client
import select
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psycopg
import pytest
import testing

pytestmark = pytest.mark.slow

NAME = f"{testing.PREFIX}-tracking"
REDIS_DB = 0
# This module's own database: test_tracking_worker migrates its own at the same time on another worker.
DATABASE = "tracking_api"


@pytest.fixture(scope="module")
def image(backing: testing.Backing) -> str:
    return testing.build_image("tracking")


@pytest.fixture(scope="module")
def env(backing: testing.Backing) -> dict[str, str]:
    return backing.database("tracking", DATABASE, REDIS_DB)


@pytest.fixture(scope="module")
def migrated(image: str, env: dict[str, str]) -> None:
    done = testing.run_once(image, f"{NAME}-migrate", env, "migrate")
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def api(image: str, env: dict[str, str], migrated: None) -> Iterator[testing.Container]:
    with testing.serving(image, f"{NAME}-api", env) as container:
        yield container


def new_code() -> str:
    return f"FD{uuid.uuid4().hex[:12].upper()}"


def test_the_migration_release_task_is_idempotent_and_runs_once_when_started_twice(
        image: str, env: dict[str, str], backing: testing.Backing) -> None:
    with psycopg.connect(backing.pg_conninfo(DATABASE, "tracking"), autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS tracking_events, parcels, schema_migrations")
    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda i: testing.run_once(image, f"{NAME}-migrate{i}", env, "migrate"), (1, 2)))
    for run in runs:
        assert run.returncode == 0, run.stdout + run.stderr
    messages = [line["msg"] for run in runs for line in testing.json_lines(run.stdout)]
    assert messages.count("migration applied") == 1, messages  # the second run waited, then found nothing to do
    assert messages.count("schema up to date") == 1, messages
    again = testing.run_once(image, f"{NAME}-migrate3", env, "migrate")
    assert again.returncode == 0 and "schema up to date" in again.stdout, again.stdout + again.stderr
    with psycopg.connect(backing.pg_conninfo(DATABASE, "tracking")) as conn:
        assert conn.execute("SELECT version FROM schema_migrations").fetchall() == [("0001_parcels_and_events",)]


def test_a_parcel_is_registered_its_events_recorded_and_its_history_read(api: testing.Container) -> None:
    http = httpx.Client(base_url=api.url, timeout=30)
    code = new_code()
    made = http.post("/tracking/parcels", json={"code": code, "recipient": "E. Mustermann",
                                                "destination_postcode": "10115"})
    assert made.status_code == 201, made.text
    assert made.json()["status"] == "registered"
    assert http.post("/tracking/parcels", json={"code": code}).status_code == 409

    events = [("in_transit", "Leipzig hub", "2026-12-01T18:00:00+00:00"),
              ("picked_up", "Berlin depot", "2026-12-01T09:30:00+01:00"),
              ("delivered", "Munich", "2026-12-02T11:15:00+00:00")]
    ids = []
    for status, location, occurred_at in events:
        posted = http.post(f"/tracking/parcels/{code}/events",
                           json={"status": status, "location": location, "occurred_at": occurred_at})
        assert posted.status_code == 201, posted.text
        ids.append(posted.json()["event_id"])
    retried = http.post(f"/tracking/parcels/{code}/events",
                        json={"status": "picked_up", "occurred_at": "2026-12-01T09:30:00+01:00", "event_id": ids[1]})
    assert retried.status_code == 200 and retried.json()["created"] is False

    parcel = http.get(f"/tracking/parcels/{code}").json()
    assert parcel["status"] == "delivered"
    assert [e["status"] for e in parcel["events"]] == ["picked_up", "in_transit", "delivered"]  # by time, not arrival
    assert [e["event_id"] for e in parcel["events"]] == [ids[1], ids[0], ids[2]]
    assert parcel["events"][0]["location"] == "Berlin depot"

    assert http.get("/tracking/parcels/FDNOSUCHPARCEL").status_code == 404
    assert http.post("/tracking/parcels/FDNOSUCHPARCEL/events", json={"status": "delivered"}).status_code == 404
    assert http.post(f"/tracking/parcels/{code}/events", json={"status": "lost_in_space"}).status_code == 422
    naive = http.post(f"/tracking/parcels/{code}/events", json={"status": "returned", "occurred_at": "2026-12-02T12:00:00"})
    assert naive.status_code == 422
    assert http.post("/tracking/parcels", json={"code": "a b"}).status_code == 422


def test_an_idle_keep_alive_connection_outlives_uvicorns_default(api: testing.Container) -> None:
    """nginx reuses its idle upstream connections for up to 60 s; a service that closed one after uvicorn's
    default 5 s raced nginx's next request on it (a POST then failed with a 502). 6 s idle, the connection
    is still open and answers (fdservice.cli.KEEP_ALIVE_SECONDS; a 6 s test, not a 61 s one)."""
    assert api.port
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
    try:
        conn.request("GET", "/healthz")
        first = conn.getresponse()
        assert first.status == 200 and first.read(), "the first answer"
        sock = conn.sock
        time.sleep(6)
        readable, _, _ = select.select([sock], [], [], 0)
        assert not (readable and sock.recv(1, socket.MSG_PEEK) == b""), "the service closed the idle connection"
        conn.request("GET", "/healthz")
        second = conn.getresponse()
        assert second.status == 200 and conn.sock is sock, "the second answer, on the same connection"
    finally:
        conn.close()


def test_logs_are_json_lines_and_each_request_is_logged(api: testing.Container) -> None:
    httpx.get(f"{api.url}/tracking/parcels/FDLOGGED", timeout=30)
    api.wait_for_log("/tracking/parcels/FDLOGGED")  # the access line may come just after the answer
    lines = testing.json_lines(api.logs())  # fails on any line that is not JSON
    assert all(line["service"] == "tracking" and line["release"] == "test" for line in lines)
    assert any(line.get("path") == "/tracking/parcels/FDLOGGED" and line.get("status") == 404
               and "duration_ms" in line for line in lines), lines[-5:]


def test_readyz_names_the_backend_that_does_not_answer(api: testing.Container, image: str,
                                                       env: dict[str, str]) -> None:
    ready = httpx.get(f"{api.url}/readyz", timeout=30)
    assert ready.status_code == 200 and ready.json()["checks"] == {"postgresql": "ok", "redis": "ok"}
    # The same image pointed at a Redis and a PostgreSQL port where nothing listens.
    broken = testing.Container.run(image, f"{NAME}-unready", {**env, "REDIS_URL": "redis://backing:6390/0",
                                                             "PGPORT": "5440"})
    try:
        broken.wait_until_answers("/healthz")  # the process answers: the deploy's cutover may go on
        assert broken.healthcheck() == 0
        answer = httpx.get(f"{broken.url}/readyz", timeout=30)
        assert answer.status_code == 503
        checks = answer.json()["checks"]
        assert checks["redis"].startswith("unavailable") and checks["postgresql"].startswith("unavailable")
        assert httpx.get(f"{broken.url}/tracking/parcels/FDANY", timeout=30).status_code == 503
    finally:
        broken.remove()


def waiting_on_a_lock(backing: testing.Backing, application: str) -> bool:
    with psycopg.connect(backing.pg_conninfo(DATABASE, "tracking"), autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
                            " AND datname = current_database() AND wait_event_type = 'Lock'", (application,)).fetchone() == (1,)


def wait_until(predicate: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.1)


def test_sigterm_lets_the_request_in_flight_finish(image: str, env: dict[str, str], migrated: None,
                                                   backing: testing.Backing) -> None:
    container = testing.Container.run(image, f"{NAME}-sigterm", env)
    try:
        container.wait_until_answers()
        http = httpx.Client(base_url=container.url, timeout=120)
        code = new_code()
        assert http.post("/tracking/parcels", json={"code": code}).status_code == 201
        answer: dict[str, httpx.Response] = {}
        with psycopg.connect(backing.pg_conninfo(DATABASE, "tracking")) as lock:
            # The test holds the parcel's row: the POST below waits for it inside the service.
            lock.execute("SELECT 1 FROM parcels WHERE code = %s FOR UPDATE", (code,))
            posting = threading.Thread(target=lambda: answer.update(
                post=http.post(f"/tracking/parcels/{code}/events", json={"status": "in_transit"})))
            posting.start()
            wait_until(lambda: waiting_on_a_lock(backing, "tracking-api"), "the POST waits on the row lock")
            container.signal("TERM")
            container.wait_for_log("Shutting down")
            assert container.state()["Running"], "the service exited with a request in flight"
        # The lock is released with the test's transaction: the request completes, then the process exits.
        posting.join(60)
        assert answer["post"].status_code == 201, answer["post"].text
        assert container.wait_exit() == 0
        assert "stopped after finishing in-flight requests" in container.logs()
        with psycopg.connect(backing.pg_conninfo(DATABASE, "tracking")) as conn:
            assert conn.execute("SELECT e.status FROM tracking_events e JOIN parcels p ON p.id = e.parcel_id"
                                " WHERE p.code = %s", (code,)).fetchall() == [("in_transit",)]
    finally:
        container.remove()


def test_migrations_only_expand_the_schema() -> None:
    migrations = testing.migrations_of("tracking")
    assert migrations, "no migrations found"
    for name, sql in migrations.items():
        assert testing.contract_statements(sql) == [], f"{name} would break the release still running"
    # The check itself refuses the contract step in an otherwise harmless migration.
    assert testing.contract_statements("ALTER TABLE parcels ADD COLUMN weight_g integer;\n"
                                       "ALTER TABLE parcels DROP COLUMN recipient;") == [
        "ALTER TABLE parcels DROP COLUMN recipient"]
