"""The web application: middleware, who-is-asking, the JSON API and the event stream.

The HTML pages live in pages.py; both call service.Console for anything that decides or stores.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import fastapi_offline
from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from sqlalchemy import select
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from fleetdeploy.console.config import Config
from fleetdeploy.console.db import AuditEntry, JobEvent
from fleetdeploy.console.jobs import FINAL, Subscriber
from fleetdeploy.console.security import TOKEN_ROLES, Principal, same
from fleetdeploy.console.service import Console, ConsoleError

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent
COOKIE = "fd_session"
# A quiet event stream sends a ping this often; every stream checks this often that its reader is
# still allowed (token not revoked, session not ended) and ends when not.
_PING_SECONDS = 5.0


class BodyLimit:
    """Refuse request bodies over `limit` bytes with 413, whether or not Content-Length says so.

    The body is read here, before the application sees it, so a chunked body over the limit gets 413
    too, not the 400 of a parser that failed half-way; `limit` bytes at most are held."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await _too_large(self.limit, send)
            return
        received: list[Message] = []
        seen = 0
        while True:
            message = await receive()
            received.append(message)
            if message["type"] != "http.request":
                break
            seen += len(message.get("body", b""))
            if seen > self.limit:
                await _too_large(self.limit, send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return received.pop(0) if received else await receive()

        await self.app(scope, replay, send)


async def _too_large(limit: int, send: Send) -> None:
    body = json.dumps({"detail": f"request body over {limit} bytes"}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def client_ip(request: Request) -> str:
    """The client's address: the connection's, or what a trusted proxy (security.trusted_proxies) says."""
    return request.client.host[:64] if request.client else "-"


def console_of(request: Request) -> Console:
    return request.app.state.console  # type: ignore[no-any-return]


def credentials(request: Request) -> tuple[str | None, str | None]:
    """The bearer token (CI) and the session cookie (browser) the request carries."""
    auth = request.headers.get("authorization", "")
    token = auth[7:].strip() if auth.lower().startswith("bearer ") else None
    return token, request.cookies.get(COOKIE)


def who_is_asking(request: Request) -> Principal | None:
    """A bearer token (CI) or the session cookie (browser); None when neither is valid."""
    return console_of(request).principal_of(*credentials(request))


def api_principal(request: Request) -> Principal:
    who = who_is_asking(request)
    if who is None:
        raise ConsoleError(401, "sign in or send 'Authorization: Bearer <token>'")
    if request.method not in ("GET", "HEAD", "OPTIONS") and not who.via_token:
        # A browser session changing state must prove it came from our own page.
        sent = request.headers.get("x-csrf-token", "")
        if not who.csrf or not same(sent, who.csrf):
            raise ConsoleError(403, "missing or wrong X-CSRF-Token header")
    return who


def viewer(who: Principal = Depends(api_principal)) -> Principal:
    if not who.at_least("viewer"):
        raise ConsoleError(403, f"{who.name} may only post alerts")
    return who


def admin(who: Principal = Depends(api_principal)) -> Principal:
    if not who.at_least("admin"):
        raise ConsoleError(403, f"{who.name} ({who.role}) is not an admin")
    return who


class JobRequest(BaseModel):
    environment: str = Field(description="An environment (inventory) name, e.g. staging", max_length=64)
    action: str = Field(description="deploy, rollback, provision or an action the admin registered", max_length=64)
    release: str | None = Field(None, description="Image tag; must exist in the registry", max_length=128)
    extra_vars: dict[str, Any] = Field(default_factory=dict, description="Validated against the action's schema")
    limit: str | None = Field(None, max_length=512, description="A host pattern for --limit (web1,web2 or "
                              "app:!web3), where the action's `allow` lists limit")
    check: bool = Field(False, description="Run with --check (nothing changes), where the action allows check")
    diff: bool = Field(False, description="Run with --diff, where the action allows diff")


class RelaunchRequest(BaseModel):
    hosts: Literal["all", "failed"] = Field(
        "all", description="all: every host the job ran on; failed: only those it ended failed or unreachable on")


class RejectRequest(BaseModel):
    reason: str = Field("", max_length=500, description="Why, for the audit log and the job's page")


class TokenRequest(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    role: str = Field(description=f"one of {', '.join(TOKEN_ROLES)}")
    environments: list[str] | None = Field(None, description="None: every environment")


class HostTask(BaseModel):
    counter: int | None = Field(description="The event's place in the job's output")
    play: str
    task: str
    event: str = Field(description="The runner event: runner_on_ok, runner_on_failed, runner_item_on_ok, ...")
    state: str = Field(description="ok, changed, failed, unreachable, skipped (a loop item: its own outcome)")
    created: str | None = Field(description="When the event happened (the controller's clock, UTC)")
    stdout: str = Field(description="The lines ansible-playbook printed for it, redacted like every stored event")
    elapsed: float | None = Field(description="Seconds the task took on the host; None for a loop item")


class HostLog(BaseModel):
    job_id: int
    host: str
    result: str | None = Field(description="The host's outcome in the job (the grid's result column)")
    events_pruned: bool = Field(description="True when retention dropped the job's events: the log is empty")
    tasks: list[HostTask]


class LogMatch(BaseModel):
    counter: int | None
    host: str | None
    task: str
    line: str


class LogSearch(BaseModel):
    job_id: int
    query: str
    host: str | None
    matches: list[LogMatch]
    truncated: bool = Field(description="True when there were more matches than the answer holds")


class ReleaseEntry(BaseModel):
    id: int = Field(description="The job")
    environment: str
    action: str
    service: str | None
    release: str | None
    launched_by: str
    status: str
    rc: int | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    relaunch_of: int | None
    canceled_by: str | None
    explanation: str | None
    digests: dict[str, str] = Field(description="{image:tag: registry digest} the job recorded, if any")
    hosts: dict[str, str] = Field(description="Each host's outcome")


class SettingChange(BaseModel):
    name: str = Field(description="release, or an extra var's name")
    before: Any
    after: Any
    change: Literal["added", "removed", "changed"]


class ReleaseDiff(BaseModel):
    environment: str
    before: int = Field(description="The older job")
    after: int = Field(description="The newer job")
    changes: list[SettingChange]
    same: list[str] = Field(description="Settings both jobs had with the same value")


api = APIRouter(prefix="/api")


@api.get("/me", summary="Who the request is authenticated as")
def me(who: Principal = Depends(api_principal)) -> dict[str, Any]:
    return {"name": who.name, "role": who.role, "environments": who.environments, "token": who.via_token}


@api.get("/schedules", summary="The schedules of the environments this principal sees, with their next run (UTC)")
def schedules(request: Request, who: Principal = Depends(viewer)) -> list[dict[str, Any]]:
    return console_of(request).schedules(who)


@api.get("/environments", summary="Environments (inventories) this principal sees")
def environments(request: Request, who: Principal = Depends(viewer)) -> list[dict[str, Any]]:
    console = console_of(request)
    return [{"name": e.name, "description": e.description, "running": console.jobs.busy_job(e.name),
             "may_launch": who.may("deployer", e.name)}
            for e in console.config.environments.values() if who.sees(e.name)]


@api.get("/actions", summary="Actions (playbooks), their release source and extra-vars schema")
def actions(request: Request, who: Principal = Depends(viewer)) -> list[dict[str, Any]]:
    return [{"name": a.name, "description": a.description, "playbook": a.playbook.name, "role": a.role,
             "release": {"variable": a.release.variable, "repository": a.release.repository,
                         "required": a.release.required} if a.release else None,
             "extra_vars_schema": a.extra_vars_schema, "allow": list(a.allow)}
            for a in console_of(request).config.actions.values()]


@api.get("/releases", summary="The tags the registry holds for an action's repository")
def releases(request: Request, action: str, who: Principal = Depends(viewer)) -> dict[str, Any]:
    console = console_of(request)
    act = console.config.actions.get(action)
    if act is None:
        raise ConsoleError(422, f"unknown action {action!r}")
    return {"action": action, "tags": console.releases(act, fresh=True)}


@api.post("/jobs", status_code=201, summary="Launch a job; 409 with who runs what if the environment is busy")
def create_job(body: JobRequest, request: Request, who: Principal = Depends(viewer)) -> dict[str, Any]:
    console = console_of(request)
    req = console.validate_launch(who, body.environment, body.action, body.release, body.extra_vars,
                                  body.limit, body.check, body.diff)
    job_id = console.launch(who, req, client_ip(request))
    job = console.job(who, job_id)
    # status "pending": the environment wants an approval first (docs/console.md, "Approvals"); the events
    # stream has nothing to say until then, so a client waits on GET /api/jobs/{id} for the status to change.
    return {"id": job_id, "url": f"/jobs/{job_id}", "events": f"/api/jobs/{job_id}/events",
            "status": job["status"], "approval_deadline": job["approval_deadline"]}


@api.get("/jobs", summary="Job history, newest first, with filters")
def list_jobs(request: Request, environment: str | None = None, action: str | None = None,
              status: str | None = None, user: str | None = None, before: int | None = None,
              limit: int = Query(50, ge=1, le=500), who: Principal = Depends(viewer)) -> list[dict[str, Any]]:
    return console_of(request).list_jobs(who, environment, action, status, user, before, limit)


@api.get("/jobs/{job_id}", summary="Status, per-host results, the grid and the recap")
def get_job(job_id: int, request: Request, who: Principal = Depends(viewer)) -> dict[str, Any]:
    return console_of(request).job(who, job_id)


@api.get("/jobs/{job_id}/hosts/{host}/log", response_model=HostLog,
         summary="One host's output in the job, task by task, with each task's elapsed time")
def host_log(job_id: int, host: str, request: Request, who: Principal = Depends(viewer)) -> dict[str, Any]:
    return console_of(request).host_log(who, job_id, host)


@api.get("/jobs/{job_id}/log/search", response_model=LogSearch,
         summary="The job's output lines holding a text (case-insensitive), optionally of one host")
def search_log(job_id: int, request: Request, q: str = Query(min_length=1, max_length=200),
               host: str | None = Query(None, max_length=255), who: Principal = Depends(viewer)) -> dict[str, Any]:
    return console_of(request).search_log(who, job_id, q, host)


@api.get("/jobs/{job_id}/log.txt", response_class=PlainTextResponse,
         summary="The job's whole output as plain text (redacted, without colour codes), to download")
def log_text(job_id: int, request: Request, who: Principal = Depends(viewer)) -> PlainTextResponse:
    text = console_of(request).log_text(who, job_id)
    return PlainTextResponse(text, headers={"Content-Disposition": f'attachment; filename="job-{job_id}.log"',
                                            "Cache-Control": "no-store"})


@api.get("/environments/{environment}/releases", response_model=list[ReleaseEntry],
         summary="Release history of an environment: who released what, when, the outcome and image digests")
def release_history(environment: str, request: Request, service: str | None = Query(None, max_length=64),
                    limit: int = Query(100, ge=1, le=500), who: Principal = Depends(viewer)) -> list[dict[str, Any]]:
    return console_of(request).release_history(who, environment, service, limit)


@api.get("/environments/{environment}/releases/diff", response_model=ReleaseDiff,
         summary="What changed in the settings (release, extra vars; secrets masked) between two release jobs")
def release_diff(environment: str, request: Request, before: int = Query(ge=1), after: int = Query(ge=1),
                 who: Principal = Depends(viewer)) -> dict[str, Any]:
    return console_of(request).release_diff(who, environment, before, after)


@api.post("/jobs/{job_id}/relaunch", status_code=201,
          summary="Launch a finished job again as the caller, on every host or on its failed hosts only")
def relaunch_job(job_id: int, request: Request, body: RelaunchRequest | None = None,
                 who: Principal = Depends(viewer)) -> dict[str, Any]:
    console = console_of(request)
    new_id = console.relaunch(who, job_id, body is not None and body.hosts == "failed", client_ip(request))
    return {"id": new_id, "relaunch_of": job_id, "url": f"/jobs/{new_id}", "events": f"/api/jobs/{new_id}/events"}


@api.post("/jobs/{job_id}/approve",
          summary="Approve a pending job (a second person who may launch its action there): it starts now")
def approve_job(job_id: int, request: Request, who: Principal = Depends(viewer)) -> dict[str, Any]:
    return console_of(request).approve(who, job_id, client_ip(request))


@api.post("/jobs/{job_id}/reject", summary="Reject a pending job, with a reason: it never runs")
def reject_job(job_id: int, request: Request, body: RejectRequest | None = None,
               who: Principal = Depends(viewer)) -> dict[str, Any]:
    return console_of(request).reject(who, job_id, body.reason if body else "", client_ip(request))


@api.post("/jobs/{job_id}/cancel", summary="Stop the job's whole process group")
def cancel_job(job_id: int, request: Request, who: Principal = Depends(viewer)) -> dict[str, Any]:
    return console_of(request).cancel(who, job_id, client_ip(request))


def _sse(msg: dict[str, Any]) -> str:
    head = f"id: {msg['id']}\n" if msg.get("type") == "event" else ""
    return f"{head}data: {json.dumps(msg, separators=(',', ':'))}\n\n"


@api.get("/jobs/{job_id}/events", summary="Server-sent events: a snapshot, then every event as it happens",
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
        live = console.jobs.live.get(job_id)
        if live is None or job["status"] in FINAL:
            rows = await asyncio.to_thread(_stored_events, console, job_id, start)
            for i in range(0, len(rows), 200):
                yield "".join(_sse(m) for m in rows[i:i + 200])
            yield _sse({"type": "end"})
            return
        sub = Subscriber(asyncio.get_running_loop(), asyncio.Queue())
        backlog = live.subscribe(sub, start)
        try:
            if backlog:
                yield "".join(_sse(m) for m in backlog)
            if any(m["type"] == "end" for m in backlog):
                return
            while True:
                if time.monotonic() - checked >= _PING_SECONDS and not await still_allowed():
                    yield _sse({"type": "error", "detail": "signed out, or no longer allowed to see this job"})
                    return
                try:
                    msg = await asyncio.wait_for(sub.queue.get(), _PING_SECONDS)
                except TimeoutError:
                    yield ": ping\n\n"
                    continue
                if msg is None:
                    return
                # Hand over everything already queued in one write: far fewer syscalls under load.
                batch = [msg]
                while not sub.queue.empty() and len(batch) < 500:
                    nxt = sub.queue.get_nowait()
                    if nxt is None:
                        break
                    batch.append(nxt)
                yield "".join(_sse(m) for m in batch)
                if any(m["type"] == "end" for m in batch):
                    return
        finally:
            live.unsubscribe(sub)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


def _stored_events(console: Console, job_id: int, after: int) -> list[dict[str, Any]]:
    with console.sessions() as db:
        rows = db.scalars(select(JobEvent.data).where(JobEvent.job_id == job_id, JobEvent.counter > after)
                          .order_by(JobEvent.counter)).all()
    return list(rows)


@api.post("/alerts", summary="Alertmanager webhook receiver (token role alertmanager or admin)")
async def alerts(request: Request, who: Principal = Depends(api_principal)) -> dict[str, Any]:
    if who.role not in ("alertmanager", "admin"):
        raise ConsoleError(403, f"{who.name} ({who.role}) may not post alerts")
    try:
        payload = json.loads(await request.body())
    except ValueError as exc:
        raise ConsoleError(422, f"body is not JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise ConsoleError(422, "not an Alertmanager webhook: the body must be an object")
    return {"stored": await asyncio.to_thread(console_of(request).receive_alerts, payload)}


@api.get("/audit", summary="The audit log, newest first (admin)")
def audit(request: Request, actor: str | None = None, action: str | None = None,
          limit: int = Query(100, ge=1, le=1000), who: Principal = Depends(admin)) -> list[dict[str, Any]]:
    q = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
    if actor:
        q = q.where(AuditEntry.actor == actor)
    if action:
        q = q.where(AuditEntry.action == action)
    with console_of(request).sessions() as db:
        return [{"at": a.at.isoformat(timespec="seconds"), "actor": a.actor, "action": a.action,
                 "target": a.target, "detail": a.detail, "ip": a.ip} for a in db.scalars(q)]


@api.post("/tokens", status_code=201, summary="Create an API token; the token is shown only in this answer")
def create_token(body: TokenRequest, request: Request, who: Principal = Depends(admin)) -> dict[str, Any]:
    row, token = console_of(request).create_token(who, body.name, body.role, body.environments, client_ip(request))
    return {"id": row.id, "name": row.name, "role": row.role, "environments": row.environments, "token": token}


@api.delete("/tokens/{token_id}", summary="Revoke an API token")
def revoke_token(token_id: int, request: Request, who: Principal = Depends(admin)) -> dict[str, Any]:
    row = console_of(request).revoke_token(who, token_id, client_ip(request))
    return {"id": row.id, "revoked": True}


def create_app(config: Config, console: Console | None = None) -> FastAPI:
    from fleetdeploy.console import pages

    console = console or Console(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        interrupted = await asyncio.to_thread(console.jobs.recover)
        if interrupted:
            log.warning("jobs %s were left running by a previous console: marked interrupted", interrupted)
        await asyncio.to_thread(console.jobs.prune)
        console.scheduler.start()
        yield
        await asyncio.to_thread(console.scheduler.stop)
        stopped = await asyncio.to_thread(console.jobs.shutdown)
        if stopped:
            log.warning("stopped jobs %s on shutdown: marked interrupted", stopped)

    # /docs is served below from the console's own copy of Swagger UI, under its CSP; no CDN, no ReDoc.
    app = FastAPI(title="fleetdeploy console", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Launch fleetdeploy's playbooks and watch them host by host. "
                              "Authenticate with `Authorization: Bearer <token>` "
                              "(see `fleetdeploy-console create-token`).")
    app.state.console = console

    @app.exception_handler(ConsoleError)
    async def refused(request: Request, exc: ConsoleError) -> Response:
        if not request.url.path.startswith("/api/") and exc.status in (401, 403, 404, 409, 422, 429, 503):
            return await pages.error_page(request, exc)
        headers = {"Retry-After": str(exc.extra["retry_after"])} if "retry_after" in exc.extra else None
        body = {"detail": exc.message, **{k: v for k, v in exc.extra.items() if k != "retry_after"}}
        return JSONResponse(body, status_code=exc.status, headers=headers)

    @app.middleware("http")
    async def headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("X-Frame-Options", "DENY")
        return response

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return HTMLResponse(_DOCS_PAGE)

    app.include_router(api)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.mount("/docs/assets", StaticFiles(directory=Path(fastapi_offline.__file__).parent / "static"),
              name="swagger-ui")
    app.add_middleware(BodyLimit, limit=config.max_body_bytes)
    # Only the configured proxies (the role's nginx) may say who the client is and that it came over TLS.
    app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=list(config.trusted_proxies))
    return app


# Swagger UI 5 (OpenAPI 3.1) from the files the fastapi-offline package ships, started by static/docs.js:
# no inline script, no CDN.
_DOCS_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>fleetdeploy console API</title>
<link rel="stylesheet" href="/docs/assets/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script src="/static/docs.js"></script></body></html>
"""
