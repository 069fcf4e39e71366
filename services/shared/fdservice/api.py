"""What every service's FastAPI app has: a pool of PostgreSQL connections opened with the app and
closed after the requests in flight, one JSON log line per request, 503 `database unavailable` while
PostgreSQL does not answer, and GET /healthz (the process answers; the deploy's health_path)."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol

import psycopg
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from psycopg_pool import ConnectionPool

from . import logs
from .config import ServiceSettings


class Closable(Protocol):
    def close(self) -> None: ...


def pool(settings: ServiceSettings, application_name: str) -> ConnectionPool:
    """At most settings.db_pool_size connections; opened by the app's start, not before."""
    return ConnectionPool(min_size=1, max_size=settings.db_pool_size, open=False, timeout=10,
                          kwargs={"autocommit": True, "application_name": application_name})


def create_app(service: str, settings: ServiceSettings, database: ConnectionPool, *closing: Closable,
               access_fields: Callable[[Response], dict[str, Any]] | None = None,
               **listening: Any) -> FastAPI:
    """The app with the common parts; the service adds its own routes. `closing` (Redis clients) is
    closed with the pool at shutdown; `access_fields` adds a service's fields to each request's line;
    `listening` adds fields to the "listening" line."""
    log = logging.getLogger(f"{service}.api")
    access = logging.getLogger(f"{service}.access")

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        database.open(wait=False)
        logs.event(log, "listening", port=settings.port, **listening)
        yield
        database.close()
        for resource in closing:
            resource.close()
        logs.event(log, "stopped after finishing in-flight requests")

    app = FastAPI(title=service, lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=f"/{service}/openapi.json")

    @app.middleware("http")
    async def access_log(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        extra = access_fields(response) if access_fields else {}
        logs.event(access, "request", method=request.method, path=request.url.path, status=response.status_code,
                   **extra, duration_ms=round((time.perf_counter() - started) * 1000, 2),
                   client=request.client.host if request.client else None)
        return response

    @app.exception_handler(psycopg.OperationalError)
    async def database_down(_request: Request, error: psycopg.OperationalError) -> JSONResponse:
        logs.event(log, "database unavailable", logging.ERROR, error=str(error).strip())
        return JSONResponse({"detail": "database unavailable"}, status_code=503)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok", "release": settings.release}

    return app
