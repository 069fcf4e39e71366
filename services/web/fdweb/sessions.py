"""Sessions in Redis that survive Redis being away for a moment.

Django's cache session store reads a failed Redis call as "no session" (it catches every exception, for
memcached's bad keys) and starts an empty one; SessionMiddleware then deletes the browser's session
cookie in that answer, since the session is empty. So one request during a Redis restart signed its
user out for good, while the session itself was still in Redis (persisted in its append-only file).
Here an error reaching Redis fails that request instead (503, `Retry-After`, through
fdweb.unavailable) and leaves the cookie alone: the next request, once Redis is back, finds the
session. The same for every other call to Redis a session makes (a sign-in creating one, a sign-out,
a change saved): Django let the error through, a 500. SESSION_ENGINE names this module, and
MIDDLEWARE its middleware, which answers 503 for a save that fails after the view (Django's turns any
error there into a 500, before any other middleware sees it).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.contrib.sessions import middleware
from django.contrib.sessions.backends import cache
from django.http import HttpRequest, HttpResponse
from redis.exceptions import RedisError

from fdweb.unavailable import SessionsUnavailable, unavailable_response


@contextmanager
def reaching_redis() -> Iterator[None]:
    try:
        yield
    except RedisError as error:
        raise SessionsUnavailable(str(error)) from error


class SessionStore(cache.SessionStore):
    def load(self) -> dict[str, Any]:
        with reaching_redis():
            data = self._cache.get(self.cache_key)
        if data is not None:
            return data  # type: ignore[no-any-return]
        self._session_key = None
        return {}

    def exists(self, session_key: str | None) -> bool:
        with reaching_redis():
            return super().exists(session_key)  # type: ignore[no-any-return]

    def save(self, must_create: bool = False) -> None:
        with reaching_redis():
            super().save(must_create)

    def delete(self, session_key: str | None = None) -> None:
        with reaching_redis():
            super().delete(session_key)


class SessionMiddleware(middleware.SessionMiddleware):
    def process_response(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        try:
            return super().process_response(request, response)  # type: ignore[no-any-return]
        except SessionsUnavailable as error:
            response.close()  # the view's answer is replaced: let go of what it holds (a file, a stream)
            return unavailable_response(request, error)
