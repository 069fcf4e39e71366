"""The queue of tracking events: a Redis stream read by a consumer group, and the worker that drains it.

A producer (the API's POST /tracking/events, or any system with the stream's name) adds an entry
`{"event": <JSON>}`. Each worker reads entries as a consumer of the group, records each through
store.add_event and only then acknowledges (XACK) and deletes it. An entry a worker read but did not
acknowledge (it was killed, the database failed) stays pending in the group: the same worker tries it
again, and any worker claims it (XAUTOCLAIM) once it has been idle TRACKING_CLAIM_IDLE_MS. As
add_event records an event_id once, an entry recorded twice is stored once: nothing is lost or doubled.
An entry that can never be stored goes to the dead-letter stream `<stream>:dead` with the reason, then
is acknowledged: malformed, an unknown parcel, a value PostgreSQL refuses (psycopg's DataError or
IntegrityError, e.g. a NUL byte in a text), or one delivered more than TRACKING_MAX_DELIVERIES times
(it made workers die before they could acknowledge it). Only an OperationalError (the database is
unreachable) or a Redis error makes the worker back off and try the entry in hand again, without
reading it anew: an outage does not count as deliveries, so it never dead-letters anything.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from datetime import datetime, timezone
from typing import Any

import psycopg
import redis

from fdservice import logs

from . import store
from .config import Settings
from .heartbeat import HEARTBEAT

log = logging.getLogger("tracking.worker")


def redis_client(settings: Settings) -> "redis.Redis[bytes]":
    return redis.Redis.from_url(settings.redis_url, username=settings.redis_username,
                                password=settings.redis_password, socket_timeout=10, socket_connect_timeout=5,
                                health_check_interval=30)


def parse_event(payload: dict[str, Any]) -> tuple[str, store.NewEvent]:
    """(parcel code, event) from a queued or posted event; raises ValueError when malformed."""
    try:
        code = str(payload["parcel_code"])
        occurred = payload.get("occurred_at")
        occurred_at = datetime.fromisoformat(occurred) if occurred else datetime.now(timezone.utc)
        if occurred_at.tzinfo is None:
            raise ValueError("occurred_at needs a time zone")
        return code, store.NewEvent(
            event_id=uuid.UUID(str(payload.get("event_id") or uuid.uuid4())),
            status=store.Status(payload["status"]),
            location=payload.get("location"),
            occurred_at=occurred_at,
        )
    except (KeyError, TypeError) as error:
        raise ValueError(f"missing or malformed field: {error}") from None


def enqueue(client: "redis.Redis[bytes]", settings: Settings, payload: dict[str, Any]) -> str:
    """Add an event to the stream; returns the entry's id."""
    entry_id = client.xadd(settings.stream, {"event": json.dumps(payload)})
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


def ensure_group(client: "redis.Redis[bytes]", settings: Settings) -> None:
    """Create the consumer group, reading from the stream's start (entries queued before any worker ran)."""
    try:
        client.xgroup_create(settings.stream, settings.group, id="0", mkstream=True)
    except redis.ResponseError as error:
        if "BUSYGROUP" not in str(error):
            raise


class Worker:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stopping = threading.Event()
        self.redis = redis_client(settings)
        self.db: psycopg.Connection[Any] | None = None

    def stop(self) -> None:
        """Finish the entry in hand, then return from run(); called from the SIGTERM handler."""
        self.stopping.set()

    def _connection(self) -> psycopg.Connection[Any]:
        if self.db is None or self.db.closed:
            self.db = psycopg.connect(autocommit=True, application_name="tracking-worker")
        return self.db

    def _next(self) -> tuple[str, dict[bytes, bytes]] | None:
        """The next entry for this consumer: its own pending ones first, then one idle too long in
        another consumer's hands, then a new one (waiting at most 1 s, so a stop is seen soon). An
        entry read anew too often is dead-lettered here instead of handed out once more."""
        s = self.settings
        for start in ("0", None):
            if start is None:
                claimed = self.redis.xautoclaim(s.stream, s.group, s.consumer, min_idle_time=s.claim_idle_ms,
                                                start_id="0-0", count=1)
                entries = claimed[1]
            else:
                reply = self.redis.xreadgroup(s.group, s.consumer, {s.stream: start}, count=1)
                entries = reply[0][1] if reply else []
            for entry_id, fields in entries:
                if not fields:  # a pending entry deleted meanwhile comes back without fields
                    self.redis.xack(s.stream, s.group, entry_id)
                    continue
                deliveries = self._deliveries(entry_id)
                if deliveries > s.max_deliveries:
                    self._dead_letter(entry_id.decode(), fields, f"delivered {deliveries} times, never acknowledged")
                    continue
                return entry_id.decode(), fields
        reply = self.redis.xreadgroup(s.group, s.consumer, {s.stream: ">"}, count=1, block=1000)
        if reply and reply[0][1]:
            entry_id, fields = reply[0][1][0]
            return entry_id.decode(), fields
        return None

    def _deliveries(self, entry_id: bytes) -> int:
        """How many times the group has handed this pending entry out (XPENDING's delivery count)."""
        pending = self.redis.xpending_range(self.settings.stream, self.settings.group, min=entry_id,
                                            max=entry_id, count=1)
        return int(pending[0]["times_delivered"]) if pending else 0

    def _dead_letter(self, entry_id: str, fields: dict[bytes, bytes], reason: str) -> None:
        self.redis.xadd(self.settings.dead_letter_stream, {"entry": entry_id, "reason": reason,
                                                             **{k.decode(): v for k, v in fields.items()}})
        self._done(entry_id)
        logs.event(log, "event dead-lettered", logging.WARNING, entry=entry_id, reason=reason)

    def _done(self, entry_id: str) -> None:
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(self.settings.stream, self.settings.group, entry_id)
            pipe.xdel(self.settings.stream, entry_id)
            pipe.execute()

    def handle(self, entry_id: str, fields: dict[bytes, bytes]) -> None:
        """Record one entry, then acknowledge it; dead-letter it when it can never be stored. An
        OperationalError (the database is unreachable) leaves it pending and raises."""
        try:
            payload = json.loads(fields.get(b"event", b""))
            code, event = parse_event(payload)
            created = store.add_event(self._connection(), code, event)
        except (ValueError, store.ParcelNotFound, psycopg.DataError, psycopg.IntegrityError) as error:
            if isinstance(error, store.ParcelNotFound):
                reason = f"unknown parcel {error}"
            elif isinstance(error, psycopg.Error):
                reason = f"refused by PostgreSQL ({type(error).__name__}): {str(error).strip()}"
            else:
                reason = str(error)
            self._dead_letter(entry_id, fields, reason)
            return
        self._done(entry_id)
        logs.event(log, "event stored" if created else "event already stored", entry=entry_id,
                   parcel=code, event_id=str(event.event_id), status=event.status.value)

    def run(self) -> None:
        s = self.settings
        logs.event(log, "worker started", stream=s.stream, group=s.group, consumer=s.consumer)
        backoff = 0.5
        entry: tuple[str, dict[bytes, bytes]] | None = None
        while not self.stopping.is_set():
            HEARTBEAT.touch()
            try:
                ensure_group(self.redis, s)
                while not self.stopping.is_set():
                    HEARTBEAT.touch()
                    if entry is None:
                        entry = self._next()
                    if entry is not None:
                        self.handle(*entry)
                        entry = None
                    backoff = 0.5
            except (redis.RedisError, psycopg.OperationalError) as error:
                # The entry in hand, if any, stays pending and in hand: it is tried again once the
                # backend is back, without being read anew (an outage adds no delivery to its count).
                logs.event(log, "backend unavailable, retrying", logging.WARNING, error=str(error).strip(),
                           retry_in_s=backoff)
                if self.db is not None:
                    self.db.close()
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, 10.0)
        if self.db is not None:
            self.db.close()
        HEARTBEAT.unlink(missing_ok=True)
        logs.event(log, "worker stopped")
