"""Sessions in Redis that survive Redis being away for a moment.

Django's cache session store reads a failed Redis call as "no session" (it catches every exception, for
memcached's bad keys) and starts an empty one; SessionMiddleware then deletes the browser's session
cookie in that answer, since the session is empty. So one request during a Redis restart signed its
user out for good, while the session itself was still in Redis (persisted in its append-only file).
Here an error reaching Redis fails that request instead (503, `Retry-After`, through
fdweb.unavailable) and leaves the cookie alone: the next request, once Redis is back, finds the
session. SESSION_ENGINE names this module.
"""

from __future__ import annotations

from typing import Any

from django.contrib.sessions.backends import cache
from redis.exceptions import RedisError

from fdweb.unavailable import SessionsUnavailable


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
