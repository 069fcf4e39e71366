"""JSON logs, one object a line on stdout: Python's records through the services' shared formatter
(fdservice.logs.JsonFormatter, set up by settings.LOGGING), and one line per request from
RequestLogMiddleware (uWSGI's own request log is off; its other lines are JSON too, see uwsgi.ini)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse
from django.utils.functional import empty

log = logging.getLogger("fdweb.request")


class RequestLogMiddleware:
    """One line per request: method, path, status, duration; the user's id when the request was signed in."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.monotonic()
        response = self.get_response(request)
        user = getattr(request, "user", None)
        fields = {
            "method": request.method,
            "path": request.path,
            "status": response.status_code,
            "duration_ms": round((time.monotonic() - started) * 1000, 1),
            "client": request.META.get("HTTP_X_FORWARDED_FOR", request.META.get("REMOTE_ADDR", "")),
        }
        # Only if the view read the session already: the health probes must not touch Redis.
        if user is not None and getattr(user, "_wrapped", empty) is not empty and getattr(user, "pk", None):
            fields["user_id"] = user.pk
        log.info("%s %s %s", request.method, request.path, response.status_code, extra={"fields": fields})
        return response
