"""A job while it runs, as the console holds it in memory: the source of every live view.

The manager's threads publish each message here; every browser's event stream subscribes and gets, from
its own event loop, what it missed and then each message as it comes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import queue
import threading
from dataclasses import dataclass, field
from typing import Any

from fleetdeploy.console.redact import Redactor
from fleetdeploy.console.runner.grid import Grid
from fleetdeploy.console.status import QUEUED

# Put on LiveJob.events after the playbook's last event: the ingester stops there.
END = object()


@dataclass(eq=False)
class Subscriber:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[dict[str, Any] | None]

    def push(self, msg: dict[str, Any] | None) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, msg)
        except RuntimeError:  # the browser's loop has closed
            pass


@dataclass(eq=False)
class LiveJob:
    """A running job as the console holds it in memory: the source for live views."""

    id: int
    environment: str
    action: str
    release: str | None
    launched_by: str
    created_at: dt.datetime
    status: str = QUEUED
    started_at: dt.datetime | None = None
    grid: Grid = field(default_factory=Grid)
    messages: list[dict[str, Any]] = field(default_factory=list)
    subscribers: set[Subscriber] = field(default_factory=set)
    redactor: Redactor = field(default_factory=Redactor)
    lock: threading.Lock = field(default_factory=threading.Lock)
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    canceled_by: str | None = None
    events: "queue.SimpleQueue[Any]" = field(default_factory=queue.SimpleQueue)
    received: int = 0
    done: threading.Event = field(default_factory=threading.Event)
    # The playbook's process group and its leader's identity, once it runs (see process_identity).
    pgid: int | None = None
    process_start: str | None = None
    check: bool = False

    def brief(self) -> dict[str, Any]:
        return {"id": self.id, "environment": self.environment, "action": self.action,
                "release": self.release, "launched_by": self.launched_by, "status": self.status,
                "check": self.check,
                "created_at": self.created_at.isoformat(timespec="seconds"),
                "started_at": self.started_at.isoformat(timespec="seconds") if self.started_at else None}

    def publish(self, msg: dict[str, Any]) -> None:
        with self.lock:
            self.messages.append(msg)
            for sub in self.subscribers:
                sub.push(msg)

    def subscribe(self, sub: Subscriber, after: int) -> list[dict[str, Any]]:
        """Register a browser and return what it missed, atomically, so no message is lost or doubled."""
        with self.lock:
            self.subscribers.add(sub)
            return [m for m in self.messages if m.get("id", after + 1) > after or m["type"] != "event"]

    def unsubscribe(self, sub: Subscriber) -> None:
        with self.lock:
            self.subscribers.discard(sub)

    def end_streams(self) -> None:
        """Tell every browser's stream to close (a None on its queue)."""
        with self.lock:
            for sub in self.subscribers:
                sub.push(None)

