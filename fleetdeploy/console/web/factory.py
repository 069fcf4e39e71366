"""The web application: create_app puts together the API, the event streams and the pages, with the
middleware every answer goes through (body limit, security headers, trusted proxies) and the one
handler that turns a refusal of the domain (ConsoleError) into JSON or a page.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from fleetdeploy.console.config import Config
from fleetdeploy.console.domain.console import Console
from fleetdeploy.console.domain.errors import ConsoleError
from fleetdeploy.console.web import api, pages, streams

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent


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


def create_app(config: Config, console: Console | None = None) -> FastAPI:
    console = console or Console(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        interrupted = await asyncio.to_thread(console.start)
        if interrupted:
            log.warning("jobs %s were left running by a previous console: marked interrupted", interrupted)
        yield
        stopped = await asyncio.to_thread(console.stop)
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

    app.include_router(api.router)
    app.include_router(streams.router)
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
