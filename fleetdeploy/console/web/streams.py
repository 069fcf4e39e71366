"""A job's events as server-sent events: a snapshot, then what was stored, or every message as it happens."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import StreamingResponse

from fleetdeploy.console.security import Principal
from fleetdeploy.console.web.deps import console_of, credentials, viewer

# A quiet event stream sends a ping this often; every stream checks this often that its reader is
# still allowed (token not revoked, session not ended) and ends when not.
_PING_SECONDS = 5.0

router = APIRouter(prefix="/api")


def _sse(msg: dict[str, Any]) -> str:
    head = f"id: {msg['id']}\n" if msg.get("type") == "event" else ""
    return f"{head}data: {json.dumps(msg, separators=(',', ':'))}\n\n"


@router.get("/jobs/{job_id}/events", summary="Server-sent events: a snapshot, then every event as it happens",
            response_class=StreamingResponse)
async def job_events(job_id: int, request: Request, last_event_id: int | None = Header(None),
                     after: int = Query(0, ge=0), who: Principal = Depends(viewer)) -> StreamingResponse:
    console = console_of(request)
    job = await asyncio.to_thread(console.job, who, job_id)
    start = max(after, last_event_id or 0)
    token, cookie = credentials(request)
    checked = time.monotonic()

    async def still_allowed() -> bool:
        """The token not revoked, the session not ended, the job's environment still in scope."""
        nonlocal checked
        checked = time.monotonic()
        now_who = await asyncio.to_thread(console.principal_of, token, cookie)
        return now_who is not None and now_who.at_least("viewer") and now_who.sees(job["environment"])

    async def stream() -> AsyncIterator[str]:
        yield "retry: 2000\n\n"
        yield _sse({"type": "snapshot", "job": {k: v for k, v in job.items() if k != "grid"}, "grid": job["grid"]})
        with console.following(who, job_id, start, asyncio.get_running_loop()) as feed:
            if feed is None:
                rows = await asyncio.to_thread(console.stored_events, who, job_id, start)
                for i in range(0, len(rows), 200):
                    yield "".join(_sse(m) for m in rows[i:i + 200])
                yield _sse({"type": "end"})
                return
            queue, backlog = feed
            if backlog:
                yield "".join(_sse(m) for m in backlog)
            if any(m["type"] == "end" for m in backlog):
                return
            while True:
                if time.monotonic() - checked >= _PING_SECONDS and not await still_allowed():
                    yield _sse({"type": "error", "detail": "signed out, or no longer allowed to see this job"})
                    return
                try:
                    msg = await asyncio.wait_for(queue.get(), _PING_SECONDS)
                except TimeoutError:
                    yield ": ping\n\n"
                    continue
                if msg is None:
                    return
                # Hand over everything already queued in one write: far fewer syscalls under load.
                batch = [msg]
                while not queue.empty() and len(batch) < 500:
                    nxt = queue.get_nowait()
                    if nxt is None:
                        break
                    batch.append(nxt)
                yield "".join(_sse(m) for m in batch)
                if any(m["type"] == "end" for m in batch):
                    return

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
