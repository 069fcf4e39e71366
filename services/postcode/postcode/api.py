"""The HTTP API (the web layer): requests in, cache and search calls, JSON out. No SQL here.

GET /healthz                 the process answers
GET /readyz                  PostgreSQL answers and data is loaded (503 otherwise); Redis is reported
GET /postcode/search?code=<prefix>[&country=DE][&limit=20]   postal codes starting with a prefix
GET /postcode/search?place=<name>[&country=DE][&limit=20]    places named like that (fuzzy)
GET /postcode/datasets       what was loaded, from which package version
Search answers carry X-Cache: hit, miss, or bypass (Redis unavailable).
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

import redis
from fastapi import FastAPI, HTTPException, Query, Response

from fdservice import api, logs

from . import cache, dataset, search
from .config import Settings

log = logging.getLogger("postcode.api")


def create_app(settings: Settings) -> FastAPI:
    pool = api.pool(settings, "postcode-api")
    redis_client = cache.client(settings)
    data_version = dataset.version()
    app = api.create_app("postcode", settings, pool, redis_client, data_version=data_version,
                         access_fields=lambda response: {"cache": response.headers.get("x-cache")})

    @app.get("/readyz")
    def readyz(response: Response) -> dict[str, Any]:
        checks: dict[str, str] = {}
        ready = True
        try:
            with pool.connection(timeout=3) as conn:
                loaded = search.datasets(conn)
            checks["postgresql"] = "ok" if loaded else "no data loaded (run the load release task)"
            ready = bool(loaded)
        except Exception as error:  # any failure to get an answer means not ready
            checks["postgresql"] = f"unavailable: {type(error).__name__}"
            ready = False
        try:
            redis_client.ping()
            checks["redis"] = "ok"
        except redis.RedisError as error:
            checks["redis"] = f"unavailable (answers uncached): {type(error).__name__}"
        response.status_code = 200 if ready else 503
        return {"status": "ready" if ready else "not ready", "checks": checks, "release": settings.release}

    @app.get("/postcode/datasets")
    def datasets() -> list[dict[str, Any]]:
        with pool.connection() as conn:
            return search.datasets(conn)

    @app.get("/postcode/search")
    def search_postcodes(
        response: Response,
        code: Annotated[str | None, Query(min_length=1, max_length=12, pattern=r"^[A-Za-z0-9 -]+$")] = None,
        place: Annotated[str | None, Query(min_length=2, max_length=100)] = None,
        country: Annotated[str | None, Query(pattern=r"^[A-Za-z]{2}$")] = None,
        limit: Annotated[int, Query(ge=1)] = 20,
    ) -> dict[str, Any]:
        if (code is None) == (place is None):
            raise HTTPException(400, "give exactly one of code (a prefix) or place (a name)")
        kind, text = ("code", code.strip().upper()) if code is not None else ("place", (place or "").strip())
        country = country.upper() if country else None
        limit = min(limit, settings.max_results)
        cache_key = cache.key(data_version, kind, text, country, limit)
        try:
            cached = cache.get(redis_client, cache_key)
            status = "miss" if cached is None else "hit"
        except redis.RedisError as error:
            logs.event(log, "cache unavailable", logging.WARNING, error=str(error))
            cached, status = None, "bypass"
        if cached is None:
            with pool.connection() as conn:
                found = (search.by_code_prefix(conn, text, country, limit) if kind == "code"
                         else search.by_place(conn, text, country, limit))
            cached = {"query": {kind: text, "country": country, "limit": limit}, "count": len(found), "results": found}
            if status == "miss":
                cache.put(redis_client, cache_key, cached, settings.cache_ttl)
        response.headers["X-Cache"] = status
        return cached

    return app
