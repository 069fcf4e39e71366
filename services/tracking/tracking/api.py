"""The HTTP API (the web layer): requests in, store/queue calls, JSON out. No SQL here.

GET  /healthz                          the process answers
GET  /readyz                           PostgreSQL and Redis answer (503 naming the one that does not)
POST /tracking/parcels                 register a parcel                        201, 409 if the code is taken
GET  /tracking/parcels/{code}          the parcel and its history (JSON)        200, 404
POST /tracking/parcels/{code}/events   record an event now                      201 (200 if its event_id was recorded)
POST /tracking/events                  queue an event for the worker            202
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import redis
from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from psycopg_pool import ConnectionPool
from pydantic import AwareDatetime, BaseModel, Field

from . import logs, queue, store
from .config import Settings

log = logging.getLogger("tracking.api")
access = logging.getLogger("tracking.access")

CODE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9-]{2,39}$"


class ParcelIn(BaseModel):
    code: str = Field(pattern=CODE_PATTERN, description="the carrier's tracking code")
    recipient: str | None = Field(default=None, max_length=200)
    destination_postcode: str | None = Field(default=None, max_length=20)


class EventIn(BaseModel):
    status: store.Status
    location: str | None = Field(default=None, max_length=200)
    occurred_at: AwareDatetime | None = Field(default=None, description="with a time zone; now when left out")
    event_id: uuid.UUID | None = Field(default=None, description="makes a retried POST record the event once")


class QueuedEventIn(EventIn):
    parcel_code: str = Field(pattern=CODE_PATTERN)


def create_app(settings: Settings) -> FastAPI:
    pool = ConnectionPool(min_size=1, max_size=settings.db_pool_size, open=False, timeout=10,
                          kwargs={"autocommit": True, "application_name": "tracking-api"})
    client = queue.redis_client(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        pool.open(wait=False)
        logs.event(log, "listening", port=settings.port)
        yield
        pool.close()
        client.close()
        logs.event(log, "stopped after finishing in-flight requests")

    app = FastAPI(title="tracking", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url="/tracking/openapi.json")

    @app.middleware("http")
    async def access_log(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        logs.event(access, "request", method=request.method, path=request.url.path, status=response.status_code,
                   duration_ms=round((time.perf_counter() - started) * 1000, 2),
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
        try:
            with pool.connection(timeout=3) as conn:
                store.ping(conn)
            checks["postgresql"] = "ok"
        except Exception as error:  # any failure to get an answer means not ready
            checks["postgresql"] = f"unavailable: {type(error).__name__}"
        try:
            client.ping()
            checks["redis"] = "ok"
        except redis.RedisError as error:
            checks["redis"] = f"unavailable: {type(error).__name__}"
        ready = all(value == "ok" for value in checks.values())
        response.status_code = 200 if ready else 503
        return {"status": "ready" if ready else "not ready", "checks": checks, "release": settings.release}

    @app.post("/tracking/parcels", status_code=201)
    def register(parcel: ParcelIn) -> dict[str, Any]:
        try:
            with pool.connection() as conn:
                return store.register(conn, parcel.code, parcel.recipient, parcel.destination_postcode)
        except store.ParcelExists:
            raise HTTPException(409, f"parcel {parcel.code} is registered already") from None

    @app.get("/tracking/parcels/{code}")
    def parcel_history(code: str) -> dict[str, Any]:
        try:
            with pool.connection() as conn:
                return store.history(conn, code)
        except store.ParcelNotFound:
            raise HTTPException(404, f"no parcel {code}") from None

    @app.post("/tracking/parcels/{code}/events", status_code=201)
    def add_event(code: str, event: EventIn, response: Response) -> dict[str, Any]:
        _, new = queue.parse_event({"parcel_code": code, **event.model_dump(mode="json", exclude_none=True)})
        try:
            with pool.connection() as conn:
                created = store.add_event(conn, code, new)
        except store.ParcelNotFound:
            raise HTTPException(404, f"no parcel {code}") from None
        if not created:
            response.status_code = 200
        return {"parcel_code": code, "event_id": str(new.event_id), "created": created}

    @app.post("/tracking/events", status_code=202)
    def queue_event(event: QueuedEventIn) -> dict[str, Any]:
        payload = event.model_dump(mode="json", exclude_none=True)
        payload.setdefault("event_id", str(uuid.uuid4()))
        try:
            entry = queue.enqueue(client, settings, payload)
        except redis.RedisError as error:
            logs.event(log, "queue unavailable", logging.ERROR, error=str(error))
            raise HTTPException(503, "queue unavailable") from None
        return {"queued": entry, "event_id": payload["event_id"]}

    return app
