"""/healthz: the process answers (nothing else is asked, so a Redis outage does not take every web
container out of the load balancer). /readyz: PostgreSQL, Redis and S3 each answer, 503 otherwise."""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.cache import caches
from django.core.files.storage import storages
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache

log = logging.getLogger("fdweb.health")


@never_cache
def healthz(_request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok", "release": settings.RELEASE})


def _postgresql() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _redis() -> None:
    for alias in ("default", "sessions"):
        caches[alias]._cache.get_client(write=True).ping()  # type: ignore[attr-defined]


def _s3() -> None:
    storage = storages["default"]
    storage.connection.meta.client.head_bucket(Bucket=storage.bucket_name)  # type: ignore[attr-defined]


@never_cache
def readyz(_request: HttpRequest) -> JsonResponse:
    checks: dict[str, str] = {}
    for name, check in (("postgresql", _postgresql), ("redis", _redis), ("s3", _s3)):
        try:
            check()
            checks[name] = "ok"
        except Exception as error:  # noqa: BLE001 (any failure means not ready; the kind is logged)
            checks[name] = f"failed: {type(error).__name__}"
            log.warning("%s is not ready: %s", name, type(error).__name__)
            if name == "postgresql":
                connection.close()  # the next check opens a fresh connection
    ready = all(value == "ok" for value in checks.values())
    return JsonResponse({"status": "ready" if ready else "not ready", "checks": checks,
                         "release": settings.RELEASE}, status=200 if ready else 503)
