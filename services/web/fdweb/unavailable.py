"""Answers for a request that needs a backing service which is away for a moment (a restart, a failover):
503 with Retry-After, JSON under /api/ and a short page elsewhere, never the 500 of an unhandled error.
What raises them: fdweb.sessions (Redis, which holds the sessions) and fdweb.uploads (S3, which holds the
uploads). A configuration error (a refused key, a missing bucket) is not one of them: it stays a 500.
"""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, JsonResponse

RETRY_AFTER_SECONDS = "5"


class Unavailable(Exception):
    """A backing service did not answer; `what` says, to the user, what is out of reach."""

    what = "a service this page needs"
    advice = "try again in a few seconds"

    def page(self) -> str:
        # Plain HTML: the site's templates show who is signed in, which may need the session that is away.
        return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Back in a moment</title>"
                f"</head>\n<body><h1>Back in a moment</h1><p id=\"{self.element_id}\">{self.what.capitalize()} is "
                f"out of reach for a moment: {self.advice}.</p></body></html>\n")

    element_id = "unavailable"


class SessionsUnavailable(Unavailable):
    what = "your session"
    advice = "you are still signed in; reload the page in a few seconds"
    element_id = "sessions-unavailable"


class StorageUnavailable(Unavailable):
    what = "the file store"
    advice = "nothing was lost; try again in a few seconds"
    element_id = "storage-unavailable"


class UnavailableMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        return unavailable_response(request, exception) if isinstance(exception, Unavailable) else None


def unavailable_response(request: HttpRequest, exception: Unavailable) -> HttpResponse:
    if request.path.startswith("/api/"):
        response: HttpResponse = JsonResponse(
            {"error": f"{exception.what} is unavailable for a moment; try again"}, status=503)
    else:
        response = HttpResponse(exception.page(), status=503)
    response["Retry-After"] = RETRY_AFTER_SECONDS
    return response
