"""A small load generator for deploy tests and benchmarks: keep-alive connections, GETs and POSTs, paced.

It only ever talks to the address it is given; tests and benchmarks give it 127.0.0.1.
Every request that does not come back 2xx (or cannot connect) is a failure, kept with its reason.

Latency is kept two ways. `latencies` runs from when a request was sent to its answer: what the server
took. `intended_latencies` runs from when the schedule meant to send it: what a user arriving at that
moment would have waited. They differ when a stalled answer holds a connection: the requests queued behind
it go out late, and measuring them from their late send would hide the stall (coordinated omission).
"""

from __future__ import annotations

import http.client
import json
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import NamedTuple


class Sample(NamedTuple):
    """One answered request: when it was sent (time.time()), how long it took from then, the host that
    answered a GET / ("" for a POST, whose answer is the body it was sent), and how long it took from when
    the schedule meant to send it."""

    at: float
    latency: float
    host: str
    intended_latency: float = 0.0


@dataclass
class Result:
    """What the load generator saw between start() and stop()."""

    requests: int = 0
    failures: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    intended_latencies: list[float] = field(default_factory=list)
    releases: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    samples: list[Sample] = field(default_factory=list)  # only with LoadGenerator(keep_samples=True)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, p: float, intended: bool = False) -> float:
        """The p-th percentile latency, from each request's send, or with `intended` from its scheduled send."""
        values = self.intended_latencies if intended else self.latencies
        if not values:
            return 0.0
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]

    def summary(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "failures": len(self.failures),
            "rate_per_s": round(self.rate, 1),
            "p50_ms": round(self.percentile(50) * 1000, 2),
            "p99_ms": round(self.percentile(99) * 1000, 2),
            "p99_from_schedule_ms": round(self.percentile(99, intended=True) * 1000, 2),
            "mean_ms": round(statistics.fmean(self.latencies) * 1000, 2) if self.latencies else 0.0,
            "releases_seen": self.releases,
            "first_failures": self.failures[:5],
        }


class LoadGenerator:
    """Paced GET / and POST /echo over `connections` keep-alive connections to host:port."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8080, rate: float = 60.0, connections: int = 4,
                 max_seconds: float = 900.0, keep_samples: bool = False) -> None:
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("the load generator only sends traffic to this machine's loopback address")
        self.host, self.port, self.rate, self.connections, self.max_seconds = host, port, rate, connections, max_seconds
        self.keep_samples = keep_samples
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.result = Result()

    def start(self) -> "LoadGenerator":
        self._started = time.monotonic()
        for index in range(self.connections):
            thread = threading.Thread(target=self._worker, args=(index,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> Result:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        self.result.seconds = time.monotonic() - self._started
        return self.result

    def __enter__(self) -> "LoadGenerator":
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _record(self, latency: float | None, failure: str | None, release: str | None,
                sent_at: float = 0.0, host: str = "", late: float = 0.0) -> None:
        """`late`: how long after its scheduled time the request was sent."""
        with self._lock:
            self.result.requests += 1
            if failure is not None:
                self.result.failures.append(failure)
            if latency is not None:
                self.result.latencies.append(latency)
                self.result.intended_latencies.append(late + latency)
                if self.keep_samples:
                    self.result.samples.append(Sample(sent_at, latency, host, late + latency))
            if release:
                self.result.releases[release] = self.result.releases.get(release, 0) + 1

    def _worker(self, index: int) -> None:
        interval = self.connections / self.rate
        conn: http.client.HTTPConnection | None = None
        sequence = 0
        next_at = time.monotonic() + index * interval / self.connections
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            delay = next_at - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
                if self._stop.is_set():
                    break
            scheduled = next_at
            next_at += interval
            sequence += 1
            post = sequence % 4 == 0
            body = json.dumps({"worker": index, "n": sequence}).encode() if post else None
            started, sent_at = time.monotonic(), time.time()
            late = max(0.0, started - scheduled)
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
                if post:
                    conn.request("POST", "/echo", body=body, headers={"Content-Type": "application/json"})
                else:
                    conn.request("GET", "/")
                response = conn.getresponse()
                payload = response.read()
                latency = time.monotonic() - started
                if response.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
                if not 200 <= response.status < 300:
                    self._record(latency, f"{'POST /echo' if post else 'GET /'}: HTTP {response.status} {payload[:120]!r}",
                                 None, sent_at, late=late)
                elif post and payload != body:
                    self._record(latency, f"POST /echo: body changed: {payload[:120]!r}", None, sent_at, late=late)
                else:
                    answer = {} if post else json.loads(payload)
                    self._record(latency, None, answer.get("release"), sent_at, answer.get("host") or "", late)
            except (OSError, http.client.HTTPException, ValueError) as error:
                self._record(None, f"{'POST' if post else 'GET'}: {type(error).__name__}: {error}", None)
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()
