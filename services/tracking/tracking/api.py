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
import uuid
from typing import Any

import redis
from fastapi import FastAPI, HTTPException, Response
from pydantic import AwareDatetime, BaseModel, Field

from fdservice import api, logs

from . import queue, store
from .config import Settings

log = logging.getLogger("tracking.api")

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
    pool = api.pool(settings, "tracking-api")
    client = queue.redis_client(settings)
    app = api.create_app("tracking", settings, pool, client)

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
