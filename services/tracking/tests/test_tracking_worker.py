"""The tracking image's worker mode (TRACKING_MODE=worker): it stores the events queued in the Redis
stream, stops on SIGTERM only after the event in hand is stored, and loses none, even when killed."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
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


def start_worker(image: str, env: dict[str, str], name: str) -> testing.Container:
    worker = testing.Container.run(image, f"{NAME}-{name}", {**env, "TRACKING_MODE": "worker",
                                                             "TRACKING_CONSUMER_NAME": name}, publish=False)
    worker.wait_for_log("worker started")
    return worker


def test_the_worker_stores_queued_events_and_dead_letters_what_it_cannot(
        image: str, env: dict[str, str], redis: testing.Redis, db: psycopg.Connection[Any]) -> None:
    code = register(db)
    api = testing.Container.run(image, f"{NAME}-api", env)
    worker = start_worker(image, env, "w1")
    try:
        api.wait_until_answers()
        posted = httpx.post(f"{api.url}/tracking/events", timeout=30,
                            json={"parcel_code": code, "status": "picked_up", "location": "Hamburg"})
        assert posted.status_code == 202, posted.text
        direct = queue(redis, code, "delivered", occurred_at="2026-12-03T10:00:00+00:00")
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
    finally:
        api.remove()
        worker.remove()


def test_sigterm_finishes_the_event_in_hand_and_the_rest_wait_in_the_queue(
        image: str, env: dict[str, str], redis: testing.Redis, db: psycopg.Connection[Any],
        backing: testing.Backing) -> None:
    code = register(db)
    worker = start_worker(image, env, "w2")
    successor = None
    try:
        with psycopg.connect(backing.pg_conninfo(DATABASE, "tracking")) as lock:
            # The test holds the parcel's row: the worker's store of the first event waits for it.
            lock.execute("SELECT 1 FROM parcels WHERE code = %s FOR UPDATE", (code,))
            in_hand = queue(redis, code, "picked_up")
            wait_until(lambda: waiting_on_a_lock(backing), "the worker waits on the row lock")
            behind = [queue(redis, code, "in_transit"), queue(redis, code, "delivered")]
            worker.signal("TERM")
            worker.wait_for_log("stopping after the event in hand")
            assert worker.state()["Running"], "the worker exited with an event in hand"
        assert worker.wait_exit() == 0
        logs = worker.logs()
        assert "worker stopped" in logs
        assert stored(db, in_hand, *behind) == {in_hand}, "the event in hand was not stored before the exit"
        assert redis("XLEN", STREAM) == 2  # the two behind it were left in the queue, unread
        successor = start_worker(image, env, "w3")
        wait_until(lambda: stored(db, in_hand, *behind) == {in_hand, *behind}, "the successor stores the rest")
        wait_until(lambda: redis("XLEN", STREAM) == 0, "the stream drained")
    finally:
        worker.remove()
        if successor is not None:
            successor.remove()


def test_an_event_in_the_hands_of_a_killed_worker_is_claimed_and_stored_once(
        image: str, env: dict[str, str], redis: testing.Redis, db: psycopg.Connection[Any],
        backing: testing.Backing) -> None:
    code = register(db)
    worker = start_worker(image, env, "w4")
    successor = None
    try:
        with psycopg.connect(backing.pg_conninfo(DATABASE, "tracking")) as lock:
            lock.execute("SELECT 1 FROM parcels WHERE code = %s FOR UPDATE", (code,))
            in_hand = queue(redis, code, "picked_up")
            wait_until(lambda: waiting_on_a_lock(backing), "the worker waits on the row lock")
            worker.signal("KILL")  # no chance to finish: the entry stays pending in the dead worker's name
            assert worker.wait_exit() != 0
        assert stored(db, in_hand) == set()
        assert redis("XPENDING", STREAM, "tracking-workers")[0] == 1
        successor = start_worker(image, env, "w5")  # claims entries idle for TRACKING_CLAIM_IDLE_MS (1 s here)
        wait_until(lambda: stored(db, in_hand) == {in_hand}, "the claimed event is stored")
        wait_until(lambda: redis("XPENDING", STREAM, "tracking-workers")[0] == 0, "nothing pending")
        assert db.execute("SELECT count(*) FROM tracking_events WHERE event_id = %s", (in_hand,)).fetchone() == (1,)
    finally:
        worker.remove()
        if successor is not None:
            successor.remove()


def waiting_on_a_lock(backing: testing.Backing) -> bool:
    with psycopg.connect(backing.pg_conninfo(DATABASE, "tracking"), autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'tracking-worker'"
                            " AND datname = current_database() AND wait_event_type = 'Lock'").fetchone() == (1,)


def test_an_event_postgresql_refuses_is_dead_lettered_and_the_events_behind_it_are_stored(
        image: str, env: dict[str, str], redis: testing.Redis, db: psycopg.Connection[Any]) -> None:
    code = register(db)
    # A NUL byte, which no PostgreSQL text may hold (psycopg's DataError), sent straight to the stream.
    refused = queue(redis, code, "in_transit", location="Lyon\u0000")
    behind = queue(redis, code, "delivered", location="Paris")
    worker = start_worker(image, env, "w6")
    try:
        wait_until(lambda: stored(db, behind) == {behind}, "the event behind the refused one is stored")
        wait_until(lambda: redis("XLEN", STREAM) == 0, "the stream drained")
        assert redis("XPENDING", STREAM, "tracking-workers")[0] == 0
        dead = [dict(zip(fields[::2], fields[1::2])) for _, fields in redis("XRANGE", f"{STREAM}:dead", "-", "+")]
        assert len(dead) == 1 and json.loads(dead[0]["event"])["event_id"] == refused, dead
        assert dead[0]["reason"].startswith("refused by PostgreSQL (DataError"), dead
        assert stored(db, refused) == set()
    finally:
        worker.remove()


def test_an_entry_handed_out_more_than_tracking_max_deliveries_times_is_dead_lettered(
        image: str, env: dict[str, str], redis: testing.Redis, db: psycopg.Connection[Any],
        backing: testing.Backing) -> None:
    code = register(db)
    worker = start_worker(image, env, "w7")
    successor = None
    try:
        with psycopg.connect(backing.pg_conninfo(DATABASE, "tracking")) as lock:
            lock.execute("SELECT 1 FROM parcels WHERE code = %s FOR UPDATE", (code,))
            in_hand = queue(redis, code, "picked_up")
            wait_until(lambda: waiting_on_a_lock(backing), "the worker waits on the row lock")
            worker.signal("KILL")  # as an entry that kills every worker handed it would
            assert worker.wait_exit() != 0
        # Handed out once to w7; claiming it would be the second delivery, one more than allowed here.
        successor = start_worker(image, {**env, "TRACKING_MAX_DELIVERIES": "1"}, "w8")
        wait_until(lambda: redis("XLEN", f"{STREAM}:dead") == 1, "the entry dead-lettered")
        dead = dict(zip(*[iter(redis("XRANGE", f"{STREAM}:dead", "-", "+")[0][1])] * 2))
        assert dead["reason"] == "delivered 2 times, never acknowledged", dead
        assert redis("XPENDING", STREAM, "tracking-workers")[0] == 0
        assert stored(db, in_hand) == set()
    finally:
        worker.remove()
        if successor is not None:
            successor.remove()
