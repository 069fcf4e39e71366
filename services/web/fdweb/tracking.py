"""The client of the tracking service (services/tracking): GET {TRACKING_URL}/tracking/parcels/<code> with a timeout."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from django.conf import settings


class TrackingUnavailable(Exception):
    """The tracking service did not answer in time, or answered with an error."""


class ParcelNotFound(Exception):
    pass


@dataclass(frozen=True)
class History:
    code: str
    events: list[dict[str, object]]


# No proxy from the environment: the tracking service is an internal address.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def parcel_history(code: str) -> History:
    url = f"{settings.TRACKING_URL}/tracking/parcels/{urllib.parse.quote(code, safe='')}"
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with _OPENER.open(request, timeout=settings.TRACKING_TIMEOUT) as answer:
            body = json.load(answer)
    except urllib.error.HTTPError as error:
        if error.code == 404:
            raise ParcelNotFound(code) from None
        raise TrackingUnavailable(f"the tracking service answered {error.code}") from None
    except (OSError, ValueError) as error:  # refused, unreachable, timed out, or not JSON
        raise TrackingUnavailable(f"the tracking service did not answer: {error}") from None
    events = body.get("events") if isinstance(body, dict) else None
    if not isinstance(events, list):
        raise TrackingUnavailable("the tracking service answered without a list of events")
    return History(code=str(body.get("code", code)), events=[e for e in events if isinstance(e, dict)])
