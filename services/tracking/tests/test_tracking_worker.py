"""The tracking image's worker mode (TRACKING_MODE=worker): it stores the events queued in the Redis
stream, stops on SIGTERM only after the event in hand is stored, and loses none, even when killed."""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import psycopg
import pytest
import testing

pytestmark = pytest.mark.slow

NAME = f"{testing.PREFIX}-trackingw"
STREAM = "tracking:worker-test"
# This module's own database: test_tracking_api drops and migrates its own at the same time.
DATABASE = "tracking_worker"


@pytest.fixture(scope="module")
def image(backing: testing.Backing) -> str:
    return testing.build_image("tracking")


@pytest.fixture(scope="module")
def env(backing: testing.Backing, image: str) -> dict[str, str]:
    # A stream of this module's own; another Redis database than the API tests' (0), on the shared Redis.
    base = {**backing.database("tracking", DATABASE, 2), "TRACKING_STREAM": STREAM, "TRACKING_CLAIM_IDLE_MS": "1000"}
    done = testing.run_once(image, f"{NAME}-migrate", base, "migrate")
    assert done.returncode == 0, done.stdout + done.stderr
    return base


@pytest.fixture
def redis(backing: testing.Backing) -> Iterator[testing.Redis]:
    client = backing.redis(2)
    client("DEL", STREAM, f"{STREAM}:dead")
    yield client
    client.close()


@pytest.fixture
def db(backing: testing.Backing) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(backing.pg_conninfo(DATABASE, "tracking"), autocommit=True) as conn:
        yield conn


def register(db: psycopg.Connection[Any]) -> str:
    code = f"FDW{uuid.uuid4().hex[:10].upper()}"
    db.execute("INSERT INTO parcels (code, status) VALUES (%s, 'registered')", (code,))
    return code


def queue(redis: testing.Redis, code: str, status: str = "in_transit", **extra: str) -> str:
    event_id = str(uuid.uuid4())
    redis("XADD", STREAM, "*", "event", json.dumps({"parcel_code": code, "status": status, "event_id": event_id,
                                                    "occurred_at": "2026-12-02T10:00:00+00:00", **extra}))
    return event_id


def stored(db: psycopg.Connection[Any], *event_ids: str) -> set[str]:
    rows = db.execute("SELECT event_id::text FROM tracking_events WHERE event_id::text = ANY(%s)",
                      (list(event_ids),)).fetchall()
    return {row[0] for row in rows}


def wait_until(predicate: Any, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.1)


@pytest.fixture
def start_worker(image: str, env: dict[str, str]) -> Iterator[Callable[..., testing.Container]]:
    """start_worker(name, **more_env): a worker container, started; removed with every other at the end."""
    started: list[testing.Container] = []

    def start(name: str, **more_env: str) -> testing.Container:
        worker = testing.Container.run(image, f"{NAME}-{name}", {**env, **more_env, "TRACKING_MODE": "worker",
                                                                 "TRACKING_CONSUMER_NAME": name}, publish=False)
        started.append(worker)
        worker.wait_for_log("worker started")
        return worker

    yield start
    for worker in started:
        worker.remove()


@contextmanager
def event_in_hand(backing: testing.Backing, redis: testing.Redis, code: str) -> Iterator[str]:
    """Queue an event of parcel `code` while the test holds the parcel's row, so that the worker's store of
    it waits; yields the event's id once the worker waits on the lock, and releases the row on exit."""
    with psycopg.connect(backing.pg_conninfo(DATABASE, "tracking")) as lock:
        lock.execute("SELECT 1 FROM parcels WHERE code = %s FOR UPDATE", (code,))
        in_hand = queue(redis, code, "picked_up")
        wait_until(lambda: waiting_on_a_lock(backing), "the worker waits on the row lock")
        yield in_hand


def killed_with_an_event_in_hand(start_worker: Callable[..., testing.Container], backing: testing.Backing,
                                 redis: testing.Redis, db: psycopg.Connection[Any], name: str) -> str:
    """Start worker `name` and kill it (SIGKILL: no chance to finish) while it stores an event of a new
    parcel; the event's id. Its entry stays pending in the dead worker's name."""
    worker = start_worker(name)
    with event_in_hand(backing, redis, register(db)) as in_hand:
        worker.signal("KILL")
        assert worker.wait_exit() != 0
    return in_hand


def test_the_worker_stores_queued_events_and_dead_letters_what_it_cannot(
        image: str, env: dict[str, str], redis: testing.Redis, db: psycopg.Connection[Any],
        start_worker: Callable[..., testing.Container]) -> None:
    code = register(db)
    with testing.serving(image, f"{NAME}-api", env) as api:
        worker = start_worker("w1")
        posted = httpx.post(f"{api.url}/tracking/events", timeout=30,
                            json={"parcel_code": code, "status": "picked_up", "location": "Hamburg"})
        assert posted.status_code == 202, posted.text
        # Later than the posted event, which takes the time of its POST: the parcel ends delivered.
        later = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
        direct = queue(redis, code, "delivered", occurred_at=later)
        unknown = queue(redis, "FDNOSUCHPARCEL")
        redis("XADD", STREAM, "*", "event", "not json")
        wait_until(lambda: stored(db, posted.json()["event_id"], direct) == {posted.json()["event_id"], direct},
                   "both events stored")
        wait_until(lambda: redis("XLEN", f"{STREAM}:dead") == 2, "two entries dead-lettered")
        wait_until(lambda: redis("XLEN", STREAM) == 0, "the stream drained")
        assert redis("XPENDING", STREAM, "tracking-workers")[0] == 0
        dead = redis("XRANGE", f"{STREAM}:dead", "-", "+")
        reasons = sorted(dict(zip(fields[::2], fields[1::2]))["reason"] for _, fields in dead)
        assert reasons[1] == "unknown parcel FDNOSUCHPARCEL" and "Expecting value" in reasons[0], reasons
        assert unknown not in stored(db, unknown)
        assert db.execute("SELECT status FROM parcels WHERE code = %s", (code,)).fetchone() == ("delivered",)
        assert all(line["service"] == "tracking" for line in testing.json_lines(worker.logs()))
        assert worker.healthcheck() == 0 and api.healthcheck() == 0  # the worker's heartbeat, the API's /healthz
        # Docker runs the HEALTHCHECK every 30 s: the worker's reads a file's age, with the standard library only.
        imports = worker.healthcheck_imports()
        # (sitecustomize: Debian's python3 loads its site hook.)
        assert "tracking" in imports, imports
        assert imports - set(sys.stdlib_module_names) - {"tracking", "fdservice", "sitecustomize"} == set(), imports


def test_sigterm_finishes_the_event_in_hand_and_the_rest_wait_in_the_queue(
        redis: testing.Redis, db: psycopg.Connection[Any], backing: testing.Backing,
        start_worker: Callable[..., testing.Container]) -> None:
    code = register(db)
    worker = start_worker("w2")
    with event_in_hand(backing, redis, code) as in_hand:
        behind = [queue(redis, code, "in_transit"), queue(redis, code, "delivered")]
        worker.signal("TERM")
        worker.wait_for_log("stopping after the event in hand")
        assert worker.state()["Running"], "the worker exited with an event in hand"
    assert worker.wait_exit() == 0
    logs = worker.logs()
    assert "worker stopped" in logs
    assert stored(db, in_hand, *behind) == {in_hand}, "the event in hand was not stored before the exit"
    assert redis("XLEN", STREAM) == 2  # the two behind it were left in the queue, unread
    start_worker("w3")
    wait_until(lambda: stored(db, in_hand, *behind) == {in_hand, *behind}, "the successor stores the rest")
    wait_until(lambda: redis("XLEN", STREAM) == 0, "the stream drained")


def test_an_event_in_the_hands_of_a_killed_worker_is_claimed_and_stored_once(
        redis: testing.Redis, db: psycopg.Connection[Any], backing: testing.Backing,
        start_worker: Callable[..., testing.Container]) -> None:
    in_hand = killed_with_an_event_in_hand(start_worker, backing, redis, db, "w4")
    assert stored(db, in_hand) == set()
    assert redis("XPENDING", STREAM, "tracking-workers")[0] == 1
    start_worker("w5")  # claims entries idle for TRACKING_CLAIM_IDLE_MS (1 s here)
    wait_until(lambda: stored(db, in_hand) == {in_hand}, "the claimed event is stored")
    wait_until(lambda: redis("XPENDING", STREAM, "tracking-workers")[0] == 0, "nothing pending")
    assert db.execute("SELECT count(*) FROM tracking_events WHERE event_id = %s", (in_hand,)).fetchone() == (1,)


def waiting_on_a_lock(backing: testing.Backing) -> bool:
    with psycopg.connect(backing.pg_conninfo(DATABASE, "tracking"), autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'tracking-worker'"
                            " AND datname = current_database() AND wait_event_type = 'Lock'").fetchone() == (1,)


def test_an_event_postgresql_refuses_is_dead_lettered_and_the_events_behind_it_are_stored(
        redis: testing.Redis, db: psycopg.Connection[Any], start_worker: Callable[..., testing.Container]) -> None:
    code = register(db)
    # A NUL byte, which no PostgreSQL text may hold (psycopg's DataError), sent straight to the stream.
    refused = queue(redis, code, "in_transit", location="Lyon\u0000")
    behind = queue(redis, code, "delivered", location="Paris")
    start_worker("w6")
    wait_until(lambda: stored(db, behind) == {behind}, "the event behind the refused one is stored")
    wait_until(lambda: redis("XLEN", STREAM) == 0, "the stream drained")
    assert redis("XPENDING", STREAM, "tracking-workers")[0] == 0
    dead = [dict(zip(fields[::2], fields[1::2])) for _, fields in redis("XRANGE", f"{STREAM}:dead", "-", "+")]
    assert len(dead) == 1 and json.loads(dead[0]["event"])["event_id"] == refused, dead
    assert dead[0]["reason"].startswith("refused by PostgreSQL (DataError"), dead
    assert stored(db, refused) == set()


def test_an_entry_handed_out_more_than_tracking_max_deliveries_times_is_dead_lettered(
        redis: testing.Redis, db: psycopg.Connection[Any], backing: testing.Backing,
        start_worker: Callable[..., testing.Container]) -> None:
    # w7 dies as it would on an entry that kills every worker handed it.
    in_hand = killed_with_an_event_in_hand(start_worker, backing, redis, db, "w7")
    # Handed out once to w7; claiming it would be the second delivery, one more than allowed here.
    start_worker("w8", TRACKING_MAX_DELIVERIES="1")
    wait_until(lambda: redis("XLEN", f"{STREAM}:dead") == 1, "the entry dead-lettered")
    dead = dict(zip(*[iter(redis("XRANGE", f"{STREAM}:dead", "-", "+")[0][1])] * 2))
    assert dead["reason"] == "delivered 2 times, never acknowledged", dead
    assert redis("XPENDING", STREAM, "tracking-workers")[0] == 0
    assert stored(db, in_hand) == set()
