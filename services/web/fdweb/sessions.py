"""Sessions in Redis that survive Redis being away for a moment.

Django's cache session store reads a failed Redis call as "no session" (it catches every exception, for
memcached's bad keys) and starts an empty one; SessionMiddleware then deletes the browser's session
cookie in that answer, since the session is empty. So one request during a Redis restart signed its
user out for good, while the session itself was still in Redis (persisted in its append-only file).
Here an error reaching Redis fails that request instead (503, `Retry-After`, through
UnavailableMiddleware) and leaves the cookie alone: the next request, once Redis is back, finds the
session. SESSION_ENGINE names this module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib.sessions.backends import cache
from django.http import HttpRequest, HttpResponse, JsonResponse
from redis.exceptions import RedisError

# Plain HTML: the site's templates show who is signed in, which needs the session this page is about.
UNAVAILABLE_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Back in a moment</title></head>
<body><h1>Back in a moment</h1><p id="sessions-unavailable">This page needs your session, which is out of
reach for a moment. You are still signed in: reload the page in a few seconds.</p></body></html>
"""


class SessionsUnavailable(Exception):
    """Redis, which holds the sessions, did not answer."""


class SessionStore(cache.SessionStore):
    def load(self) -> dict[str, Any]:
        try:
            data = self._cache.get(self.cache_key)
        except RedisError as error:
            raise SessionsUnavailable(str(error)) from error
        if data is not None:
            return data  # type: ignore[no-any-return]
        self._session_key = None
        return {}


class UnavailableMiddleware:
    """Answers a request that found Redis away with 503 and Retry-After: JSON under /api/ and /tracking/,
    a page elsewhere; never the 500 of an unhandled error, and never a signed-out session."""

    RETRY_AFTER_SECONDS = "5"

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, SessionsUnavailable):
            return None
        if request.path.startswith("/api/"):
            response: HttpResponse = JsonResponse({"error": "sessions are unavailable for a moment; try again"},
                                                  status=503)
        else:
            response = HttpResponse(UNAVAILABLE_PAGE, status=503)
        response["Retry-After"] = self.RETRY_AFTER_SECONDS
        return response
