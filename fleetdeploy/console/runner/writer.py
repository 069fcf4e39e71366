"""The one thread that writes job events to the database, in batches, off the playbook's path.

Every job's ingester hands its redacted events here (`put`, which never blocks), in the order the
playbook emitted them. The writer takes whatever has queued up (up to BATCH_EVENTS, waiting at most
LINGER_SECONDS for more once it has one), inserts it with one executemany in one transaction, and
goes back for more. A slow or locked database therefore only makes the batches bigger: the runner's
event handler and the browsers' streams (fed from memory) never wait for it. `drain` returns once
everything put before it is stored, which is what a job waits for before it is marked finished.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session, sessionmaker

from fleetdeploy.console.db import JobEvent

log = logging.getLogger(__name__)

BATCH_EVENTS = 500
LINGER_SECONDS = 0.05
# A batch the database refuses is tried again this often, with this pause, before it is given up.
_ATTEMPTS = 5
_RETRY_SECONDS = 1.0


class EventWriter:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions
        self._queue: queue.SimpleQueue[dict[str, Any] | threading.Event] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def put(self, row: dict[str, Any]) -> None:
        """Queue one job_events row (JobEvent's columns as a dict); never waits."""
        self._ensure_thread()
        self._queue.put(row)

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every row put before this call is stored (or given up); False on timeout."""
        self._ensure_thread()
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def _ensure_thread(self) -> None:
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="event-writer", daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        while True:
            rows: list[dict[str, Any]] = []
            barriers: list[threading.Event] = []
            item = self._queue.get()
            deadline = time.monotonic() + LINGER_SECONDS
            while True:
                if isinstance(item, threading.Event):
                    barriers.append(item)
                    break  # a job is waiting to end: store what it sent now, no lingering
                rows.append(item)
                if len(rows) >= BATCH_EVENTS:
                    break
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
            try:
                if rows:
                    self._write(rows)
            finally:  # a job waiting to end must never wait forever
                for barrier in barriers:
                    barrier.set()

    def _write(self, rows: list[dict[str, Any]]) -> None:
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                with self.sessions() as db:
                    db.execute(insert(JobEvent), rows)
                    db.commit()
                return
            except Exception:
                if attempt == _ATTEMPTS:
                    log.exception("could not store %d events; giving them up", len(rows))
                    return
                log.warning("could not store %d events (attempt %d of %d); trying again", len(rows), attempt,
                            _ATTEMPTS, exc_info=True)
                time.sleep(_RETRY_SECONDS)
