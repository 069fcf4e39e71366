"""Traffic for the application's lab: pages, the API, search and tracking, GETs and POSTs, signed in and not.

Every connection is its own keep-alive httpx client to the lab's load balancer on 127.0.0.1 (never any
other address), signed in as the demo user, paced so that together they send `rate` requests a second.
Each goes round a mix of requests (MIX); any answer other than the one expected, or no answer, is a
failure kept with its reason. The uploads a connection made and their bytes are kept, so a test can
fetch each one back after a deploy.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

PARCEL = "LAB0000001"  # from playbooks/lab_seed.yml


def sign_in(client: httpx.Client, user: str, password: str) -> None:
    """The web's sign-in form, as a browser sends it: the CSRF cookie first, then the form with its token."""
    client.get("/accounts/login/").raise_for_status()
    answer = client.post("/accounts/login/", data={"username": user, "password": password,
                                                   "csrfmiddlewaretoken": client.cookies["csrftoken"]})
    assert answer.status_code == 302, (answer.status_code, answer.text[:300])
    assert client.get("/api/me").json() == {"username": user}


@dataclass
class Traffic:
    """What the connections saw: per kind of request, the count and latencies; failures with reasons."""

    requests: int = 0
    failures: list[str] = field(default_factory=list)
    latencies: dict[str, list[float]] = field(default_factory=dict)
    uploads: dict[str, str] = field(default_factory=dict)  # download path -> sha256 of the bytes sent
    parcel: str = ""  # the parcel of this run that the traffic adds events to (the others' answers stay the same)
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentiles(self) -> dict[str, dict[str, float]]:
        """p50 and p99 in milliseconds per kind of request."""
        figures = {}
        for kind, values in sorted(self.latencies.items()):
            ordered = sorted(values)
            pick = lambda p: ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]  # noqa: E731
            figures[kind] = {"requests": len(ordered), "p50_ms": round(pick(50) * 1000, 1),
                             "p99_ms": round(pick(99) * 1000, 1)}
        return figures

    def failure_kinds(self) -> dict[str, int]:
        """The failures counted by what failed (the request and its status or error, without time or body)."""
        kinds = Counter(re.sub(r"^\S+ ", "", failure).split(" '")[0].split(" after ")[0][:120]
                        for failure in list(self.failures))
        return dict(kinds.most_common(12))

    def summary(self) -> dict[str, object]:
        return {"requests": self.requests, "rate_per_s": round(self.rate, 1), "failures": len(self.failures),
                "first_failures": self.failures[:5], "failure_kinds": self.failure_kinds(),
                "uploads": len(self.uploads)}


def _expect(answer: httpx.Response, status: int, marker: str = "") -> str | None:
    if answer.status_code != status:
        return f"{answer.request.method} {answer.request.url.path} -> {answer.status_code} {answer.text[:120]!r}"
    if marker and marker not in answer.text:
        return f"{answer.request.method} {answer.request.url.path} -> {status} without {marker!r}: {answer.text[:120]!r}"
    return None


def _upload(client: httpx.Client, traffic: Traffic, lock: threading.Lock) -> str | None:
    body = os.urandom(2048 + int.from_bytes(os.urandom(2), "big") % 30000)
    answer = client.post("/api/uploads", files={"file": ("sample.bin", body, "application/octet-stream")},
                         headers={"X-CSRFToken": client.cookies["csrftoken"]})
    problem = _expect(answer, 201)
    if problem is None:
        stored = answer.json()
        if stored["sha256"] != hashlib.sha256(body).hexdigest():
            return f"upload stored as {stored['sha256']}, sent {hashlib.sha256(body).hexdigest()}"
        with lock:
            traffic.uploads[stored["download"]] = stored["sha256"]
    return problem


def _request_of(error: httpx.HTTPError) -> str:
    try:
        return f"{error.request.method} {error.request.url.path}: "
    except RuntimeError:  # an error raised before any request was made
        return ""


# (kind, request): the mix each connection goes round; a kind names the service that answers it.
MIX: list[tuple[str, Callable[..., str | None]]] = [
    ("web page", lambda c, *_: _expect(c.get("/"), 200)),
    ("web api", lambda c, *_: _expect(c.get("/api/me"), 200, '"username"')),
    ("postcode", lambda c, *_: _expect(c.get("/postcode/search", params={"code": "101"}), 200, "10115")),
    ("tracking", lambda c, *_: _expect(c.get(f"/tracking/parcels/{PARCEL}"), 200, PARCEL)),
    ("web page", lambda c, *_: _expect(c.get(f"/parcels/{PARCEL}"), 200, "Hannover")),
    ("postcode", lambda c, *_: _expect(c.get("/postcode/search", params={"place": "Salzbrg"}), 200, "Salzburg")),
    ("tracking", lambda c, traffic, _lock: _expect(c.post(f"/tracking/parcels/{traffic.parcel}/events",
                                                          json={"status": "in_transit", "location": "load test"}), 201)),
    ("web api", lambda c, *_: _expect(c.get("/api/version"), 200, '"web"')),
    ("web upload", _upload),
]


class AppTraffic:
    """`with AppTraffic(port, user, password, rate=60) as traffic:` runs the mix until the block ends."""

    def __init__(self, port: int, user: str, password: str, rate: float = 60.0, connections: int = 4,
                 uploads: bool = True) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.user, self.password = user, password
        self.rate, self.connections = rate, connections
        self.mix = MIX if uploads else [entry for entry in MIX if entry[0] != "web upload"]
        self.result = Traffic()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._clients = [httpx.Client(base_url=self.base, timeout=10.0) for _ in range(connections)]

    def __enter__(self) -> Traffic:
        for client in self._clients:
            sign_in(client, self.user, self.password)
        self.result.parcel = f"LOAD{os.urandom(5).hex().upper()}"
        created = self._clients[0].post("/tracking/parcels", json={"code": self.result.parcel})
        assert created.status_code == 201, created.text[:300]
        self._started = time.monotonic()
        for index, client in enumerate(self._clients):
            thread = threading.Thread(target=self._run, args=(index, client), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self.result

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        self.result.seconds = time.monotonic() - self._started
        for client in self._clients:
            client.close()

    def _run(self, index: int, client: httpx.Client) -> None:
        interval = self.connections / self.rate
        step = index  # the connections start at different places in the mix
        next_at = time.monotonic()
        while not self._stop.is_set():
            kind, request = self.mix[step % len(self.mix)]
            step += 1
            started = time.monotonic()
            try:
                problem = request(client, self.result, self._lock)
            except httpx.HTTPError as error:
                problem = f"{kind}: {_request_of(error)}{type(error).__name__}: {error} after {time.monotonic() - started:.1f} s"
            latency = time.monotonic() - started
            with self._lock:
                self.result.requests += 1
                self.result.latencies.setdefault(kind, []).append(latency)
                if problem:
                    self.result.failures.append(f"{time.strftime('%H:%M:%S')} {problem}")
            next_at += interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))
