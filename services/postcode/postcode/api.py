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
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

import psycopg
import redis
from fastapi import FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse
from psycopg_pool import ConnectionPool

from . import cache, dataset, logs, search
from .config import Settings

log = logging.getLogger("postcode.api")
access = logging.getLogger("postcode.access")


def create_app(settings: Settings) -> FastAPI:
    pool = ConnectionPool(min_size=1, max_size=settings.db_pool_size, open=False, timeout=10,
                          kwargs={"autocommit": True, "application_name": "postcode-api"})
    redis_client = cache.client(settings)
    data_version = dataset.version()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        pool.open(wait=False)
        logs.event(log, "listening", port=settings.port, data_version=data_version)
        yield
        pool.close()
        redis_client.close()
        logs.event(log, "stopped after finishing in-flight requests")

    app = FastAPI(title="postcode", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url="/postcode/openapi.json")

    @app.middleware("http")
    async def access_log(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        logs.event(access, "request", method=request.method, path=request.url.path, status=response.status_code,
                   cache=response.headers.get("x-cache"), duration_ms=round((time.perf_counter() - started) * 1000, 2),
                   client=request.client.host if request.client else None)
        return response

    @app.exception_handler(psycopg.OperationalError)
    async def database_down(_request: Request, error: psycopg.OperationalError) -> JSONResponse:
        logs.event(log, "database unavailable", logging.ERROR, error=str(error).strip())
        return JSONResponse({"detail": "database unavailable"}, status_code=503)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok", "release": settings.release}

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
