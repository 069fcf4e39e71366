"""The postcode service's image, load release task, searches, index use and cache, on the shared
PostgreSQL + Redis. Built from the lab's Debian 12 host image as BASE_IMAGE, run as roles/app_release
runs a service (read-only root, tmpfs /tmp, no capabilities), configured by environment variables only.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import testing

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from postcode import search  # noqa: E402 (the service's own queries, EXPLAINed below)

pytestmark = pytest.mark.slow

NAME = f"{testing.PREFIX}-postcode"
REDIS_DB = 1


@pytest.fixture(scope="module")
def image(backing: testing.Backing) -> str:
    return testing.build_image("postcode")


@pytest.fixture(scope="module")
def env(backing: testing.Backing) -> dict[str, str]:
    return {**backing.service_env("postcode", REDIS_DB), "POSTCODE_COUNTRIES": "DE,AT,CH"}


@pytest.fixture(scope="module")
def db(backing: testing.Backing) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(backing.pg_conninfo("postcode"), autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="module")
def loads(image: str, env: dict[str, str], db: psycopg.Connection[Any]) -> list[list[dict[str, Any]]]:
    """The JSON lines of two loads started at once, and of a third one after them."""
    db.execute("DROP TABLE IF EXISTS postcodes, postcode_datasets, schema_migrations")
    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda i: testing.run_once(image, f"{NAME}-load{i}", env, "load"), (1, 2)))
    runs.append(testing.run_once(image, f"{NAME}-load3", env, "load"))
    for run in runs:
        assert run.returncode == 0, run.stdout + run.stderr
    return [testing.json_lines(run.stdout) for run in runs]


@pytest.fixture(scope="module")
def api(image: str, env: dict[str, str], loads: Any) -> Iterator[testing.Container]:
    with testing.serving(image, f"{NAME}-api", env) as container:
        yield container


def test_the_load_release_task_loads_each_country_once(loads: list[list[dict[str, Any]]],
                                                       db: psycopg.Connection[Any]) -> None:
    loaded = [(line["country"], line["rows"]) for run in loads for line in run if line["msg"] == "country loaded"]
    assert sorted(country for country, _ in loaded) == ["AT", "CH", "DE"], loaded  # once, by one of the two
    skipped = [line["country"] for run in loads for line in run if line["msg"] == "country loaded already"]
    assert sorted(skipped) == ["AT", "AT", "CH", "CH", "DE", "DE"]
    counts = dict(db.execute("SELECT country, count(*) FROM postcodes GROUP BY country").fetchall())
    assert counts == dict(loaded)
    datasets = db.execute("SELECT country, source, version FROM postcode_datasets ORDER BY country").fetchall()
    assert [d[0] for d in datasets] == ["AT", "CH", "DE"]
    assert all(d[1].startswith("countrystatecity-postal-codes (ODbL") and d[2] == "2.0.1" for d in datasets)
    # Real rows of the data set, not invented ones.
    for country, code, place in (("DE", "10115", "Berlin"), ("DE", "80331", "München"), ("AT", "1010", "Wien, Innere Stadt"),
                                 ("CH", "8001", "Zürich")):
        assert db.execute("SELECT count(*) FROM postcodes WHERE country = %s AND code = %s AND place = %s",
                          (country, code, place)).fetchone() == (1,), (country, code, place)


def test_search_by_code_prefix(api: testing.Container) -> None:
    answer = httpx.get(f"{api.url}/postcode/search", params={"code": "8033", "country": "de"}, timeout=30)
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert results and all(r["code"].startswith("8033") and r["country"] == "DE" for r in results)
    assert {"code": "80331", "place": "München"}.items() <= next(r for r in results if r["code"] == "80331").items()
    graz = httpx.get(f"{api.url}/postcode/search", params={"code": "8010", "country": "AT"}, timeout=30).json()
    assert graz["count"] > 1 and all(r["code"] == "8010" and r["country"] == "AT" for r in graz["results"])
    assert any(r["place"].startswith("Graz,") for r in graz["results"])
    anywhere = httpx.get(f"{api.url}/postcode/search", params={"code": "8001"}, timeout=30).json()
    assert {"country": "CH", "code": "8001", "place": "Zürich"}.items() <= anywhere["results"][0].items()
    assert httpx.get(f"{api.url}/postcode/search", params={"code": "1%"}, timeout=30).status_code == 422
    assert httpx.get(f"{api.url}/postcode/search", timeout=30).status_code == 400


# Without the umlaut as many keyboards type it, misspelt (a letter dropped, one wrong), and exact.
@pytest.mark.parametrize(("text", "country", "place"), [("Munchen", "DE", "München"), ("Zurich", "CH", "Zürich"),
                                                        ("Münchn", "DE", "München"), ("Hamburk", "DE", "Hamburg"),
                                                        ("Wien", "AT", "Wien, ")])
def test_search_by_place_is_fuzzy(api: testing.Container, text: str, country: str, place: str) -> None:
    answer = httpx.get(f"{api.url}/postcode/search", params={"place": text, "country": country}, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json()["results"][0]["place"].startswith(place), answer.json()["results"][:3]


def plan(db: psycopg.Connection[Any], query: str, params: dict[str, Any]) -> str:
    rows = db.execute(f"EXPLAIN (FORMAT JSON) {query}".encode(), params).fetchone()
    return json.dumps(rows[0] if rows else None)


def test_both_searches_use_their_index(loads: Any, db: psycopg.Connection[Any]) -> None:
    code = plan(db, search.BY_CODE_PREFIX, {"pattern": search.like_prefix("8033"), "country": "DE", "limit": 20})
    assert "postcodes_code_prefix" in code and "Seq Scan" not in code, code
    place = plan(db, search.BY_PLACE, {"text": "Munchen", "pattern": search.like_prefix("Munchen"), "country": None,
                                       "limit": 20})
    assert "postcodes_place_trgm" in place and "Seq Scan" not in place, place


def test_a_repeated_search_is_answered_from_redis(api: testing.Container, db: psycopg.Connection[Any],
                                                  backing: testing.Backing) -> None:
    params = {"code": "8010", "country": "AT"}
    redis = backing.redis(REDIS_DB)
    try:
        redis("FLUSHDB")  # this module's Redis database
        first = httpx.get(f"{api.url}/postcode/search", params=params, timeout=30)
        assert first.headers["x-cache"] == "miss" and first.json()["count"] > 0
        keys = redis("KEYS", "postcode:2.0.1:search:*")
        assert keys and 0 < redis("TTL", keys[0]) <= 300
        # Change the database behind the cache: a hit still answers what was cached, a miss the change.
        db.execute("UPDATE postcodes SET place = place || ' (changed)' WHERE code = '8010' AND country = 'AT'")
        second = httpx.get(f"{api.url}/postcode/search", params=params, timeout=30)
        assert second.headers["x-cache"] == "hit"
        assert second.json() == first.json()
        redis("FLUSHDB")
        third = httpx.get(f"{api.url}/postcode/search", params=params, timeout=30)
        assert third.headers["x-cache"] == "miss"
        assert all(r["place"].endswith(" (changed)") for r in third.json()["results"])
    finally:
        db.execute("UPDATE postcodes SET place = replace(place, ' (changed)', '') WHERE code = '8010' AND country = 'AT'")
        redis.close()


def test_without_redis_searches_are_answered_uncached(image: str, env: dict[str, str], loads: Any) -> None:
    container = testing.Container.run(image, f"{NAME}-noredis", {**env, "REDIS_URL": "redis://backing:6390/1"})
    try:
        container.wait_until_answers()
        answer = httpx.get(f"{container.url}/postcode/search", params={"place": "Graz"}, timeout=30)
        assert answer.status_code == 200 and answer.headers["x-cache"] == "bypass"
        assert answer.json()["results"][0]["place"].startswith("Graz")
        ready = httpx.get(f"{container.url}/readyz", timeout=30)
        assert ready.status_code == 200 and ready.json()["checks"]["redis"].startswith("unavailable")
        assert container.healthcheck() == 0
    finally:
        container.remove()


def test_logs_are_json_lines(api: testing.Container) -> None:
    httpx.get(f"{api.url}/postcode/search", params={"place": "Bern"}, timeout=30)
    lines = testing.json_lines(api.logs())
    assert all(line["service"] == "postcode" and line["release"] == "test" for line in lines)
    assert any(line.get("path") == "/postcode/search" and line.get("status") == 200 for line in lines)


def test_sigterm_lets_the_search_in_flight_finish(image: str, env: dict[str, str], loads: Any,
                                                  backing: testing.Backing) -> None:
    container = testing.Container.run(image, f"{NAME}-sigterm", {**env, "REDIS_URL": "redis://backing:6390/1"})
    try:
        container.wait_until_answers()
        answer: dict[str, httpx.Response] = {}
        with psycopg.connect(backing.pg_conninfo("postcode")) as lock:
            # The test holds the table: the search below waits for it inside the service.
            lock.execute("LOCK TABLE postcodes IN ACCESS EXCLUSIVE MODE")
            searching = threading.Thread(target=lambda: answer.update(get=httpx.get(
                f"{container.url}/postcode/search", params={"place": "Linz"}, timeout=120)))
            searching.start()
            deadline = time.monotonic() + 60
            while not search_waits_on_a_lock(backing):
                assert time.monotonic() < deadline, "the search never waited on the lock"
                time.sleep(0.1)
            container.signal("TERM")
            container.wait_for_log("Shutting down")
            assert container.state()["Running"], "the service exited with a request in flight"
        searching.join(60)
        assert answer["get"].status_code == 200 and answer["get"].json()["results"][0]["place"] == "Linz"
        assert container.wait_exit() == 0
    finally:
        container.remove()


def search_waits_on_a_lock(backing: testing.Backing) -> bool:
    """From a connection of its own in autocommit: inside a transaction (the lock's), pg_stat_activity is
    a snapshot taken at its first read, so it would never show the search starting to wait."""
    with psycopg.connect(backing.pg_conninfo("postcode"), autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'postcode-api'"
                            " AND datname = current_database() AND wait_event_type = 'Lock'").fetchone() == (1,)


def test_migrations_only_expand_the_schema() -> None:
    migrations = testing.migrations_of("postcode")
    assert migrations, "no migrations found"
    for name, sql in migrations.items():
        assert testing.contract_statements(sql) == [], f"{name} would break the release still running"
