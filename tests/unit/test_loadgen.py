"""The load generator (fleetdeploy/loadgen.py) against a stdlib HTTP server on 127.0.0.1 that stalls once:
the requests the stall held back are measured from when they were meant to go, not from when they went."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fleetdeploy.loadgen import LoadGenerator

STALL = 1.0  # seconds the 20th request waits for its answer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the generator expects
    count = 0
    lock = threading.Lock()

    def _answer(self, body: bytes) -> None:
        with _Handler.lock:
            _Handler.count += 1
            stall = _Handler.count == 20
        if stall:
            time.sleep(STALL)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self._answer(json.dumps({"host": "here", "release": "v1"}).encode())

    def do_POST(self) -> None:  # noqa: N802
        self._answer(self.rfile.read(int(self.headers["Content-Length"])))

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture()
def server():
    _Handler.count = 0
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def test_a_stall_counts_against_every_request_it_held_back(server: int) -> None:
    # One connection at 40/s: while the 20th answer stalls for 1 s, about 40 requests fall due behind it.
    with LoadGenerator("127.0.0.1", server, rate=40, connections=1, keep_samples=True) as load:
        while _Handler.count < 100:
            time.sleep(0.05)
    result = load.result
    assert result.failures == [] and result.requests >= 100, result.summary()
    stalled = max(result.samples, key=lambda s: s.latency)
    assert stalled.latency >= STALL, stalled
    # Measured from their sends, the requests queued behind the stall look quick; from the schedule, they
    # waited (the one due half way through the stall, at least half of it). About 20 of them.
    hidden = [s for s in result.samples if s.intended_latency >= STALL / 2 > s.latency]
    assert len(hidden) >= 10, [(round(s.latency, 3), round(s.intended_latency, 3)) for s in result.samples]
    assert all(s.intended_latency >= s.latency for s in result.samples)
    assert result.percentile(99, intended=True) >= STALL / 2 > result.percentile(95)
    assert result.summary()["p99_from_schedule_ms"] >= STALL / 2 * 1000


def test_only_loopback_is_allowed() -> None:
    with pytest.raises(ValueError, match="loopback"):
        LoadGenerator("10.0.0.1", 80)
