"""The domain: parcels and their tracking events, the only code that reads and writes the database.

Connections are in autocommit mode: a read is one statement, a write one explicit transaction.
The API and the worker both record an event through `add_event`, so an event is stored the same way
whichever path it came by, and at most once (its `event_id` is unique).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import psycopg
from psycopg.rows import dict_row


class Status(StrEnum):
    """Where a parcel is; a parcel's status is that of its latest event (by occurred_at)."""

    REGISTERED = "registered"
    PICKED_UP = "picked_up"
    IN_TRANSIT = "in_transit"
    OUT_FOR_DELIVERY = "out_for_delivery"
    FAILED_ATTEMPT = "failed_attempt"
    DELIVERED = "delivered"
    RETURNED = "returned"


class ParcelExists(Exception):
    """A parcel with that code is registered already."""


class ParcelNotFound(Exception):
    """No parcel has that code."""


@dataclass(frozen=True)
class NewEvent:
    event_id: uuid.UUID
    status: Status
    location: str | None
    occurred_at: datetime


_PARCEL_COLUMNS = "code, recipient, destination_postcode, status, created_at, updated_at"


def register(conn: psycopg.Connection[Any], code: str, recipient: str | None,
             destination_postcode: str | None) -> dict[str, Any]:
    """Register a parcel; raises ParcelExists when the code is taken."""
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "INSERT INTO parcels (code, recipient, destination_postcode, status) VALUES (%s, %s, %s, %s)"
            f" ON CONFLICT (code) DO NOTHING RETURNING {_PARCEL_COLUMNS}",
            (code, recipient, destination_postcode, Status.REGISTERED.value),
        )
        row = cur.fetchone()
    if row is None:
        raise ParcelExists(code)
    return row


def add_event(conn: psycopg.Connection[Any], code: str, event: NewEvent) -> bool:
    """Record an event of the parcel `code`; False when that event_id was recorded already.

    The parcel's row is locked for the transaction, so events of one parcel are recorded one at a
    time and its status is always that of its latest event."""
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("SELECT id FROM parcels WHERE code = %s FOR UPDATE", (code,))
        found = cur.fetchone()
        if found is None:
            raise ParcelNotFound(code)
        parcel_id = found[0]
        cur.execute(
            "INSERT INTO tracking_events (event_id, parcel_id, status, location, occurred_at)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (event_id) DO NOTHING",
            (event.event_id, parcel_id, event.status.value, event.location, event.occurred_at),
        )
        created = cur.rowcount == 1
        cur.execute(
            "UPDATE parcels SET updated_at = now(), status = (SELECT status FROM tracking_events"
            " WHERE parcel_id = %s ORDER BY occurred_at DESC, id DESC LIMIT 1) WHERE id = %s",
            (parcel_id, parcel_id),
        )
    return created


def history(conn: psycopg.Connection[Any], code: str) -> dict[str, Any]:
    """The parcel and its events, oldest first; raises ParcelNotFound."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"SELECT id, {_PARCEL_COLUMNS} FROM parcels WHERE code = %s", (code,))
        parcel = cur.fetchone()
        if parcel is None:
            raise ParcelNotFound(code)
        cur.execute(
            "SELECT event_id, status, location, occurred_at, recorded_at FROM tracking_events"
            " WHERE parcel_id = %s ORDER BY occurred_at, id",
            (parcel.pop("id"),),
        )
        parcel["events"] = cur.fetchall()
    return parcel


def ping(conn: psycopg.Connection[Any]) -> None:
    """Raise unless the database answers."""
    conn.execute("SELECT 1").fetchone()
