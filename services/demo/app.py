"""The demo service: a stand-in for a real service until the reference services exist.

GET / returns its release and host, GET /version the release, GET /healthz its health,
POST /echo echoes the body. On SIGTERM it stops accepting connections and finishes the
requests already in flight, so a deploy that stops it loses nothing.
Configured only by environment variables, like every service fleetdeploy runs. It writes no files,
so it runs on a read-only root filesystem. `app.py --healthcheck` is the image's HEALTHCHECK.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
from http.client import HTTPConnection
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RELEASE = os.environ.get("DEMO_RELEASE", "unknown")
PORT = int(os.environ.get("PORT", "8000"))
HOST_NAME = os.environ.get("FLEETDEPLOY_HOST", socket.gethostname())
# DEMO_UNHEALTHY=true never passes the health check, DEMO_UNHEALTHY=app2,app3 only on those hosts: set
# only by the failure-path tests' own build (tests/fixtures/unhealthy_demo), never by playbooks/build.yml.
_UNHEALTHY = os.environ.get("DEMO_UNHEALTHY", "false").lower()
UNHEALTHY = _UNHEALTHY == "true" or HOST_NAME in _UNHEALTHY.split(",")
MAX_BODY = int(os.environ.get("DEMO_MAX_BODY", str(1024 * 1024)))


class Handler(BaseHTTPRequestHandler):
    server_version = "fleetdeploy-demo"
    protocol_version = "HTTP/1.1"
    # TCP_NODELAY: headers and body go out in two writes, and on a kept-alive connection Nagle would
    # hold the body until the peer's delayed ACK, about 40 ms later.
    disable_nagle_algorithm = True

    def _send(self, status: int, payload: dict[str, object] | bytes, content_type: str = "application/json") -> None:
        body = payload if isinstance(payload, bytes) else (json.dumps(payload) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.server.draining.is_set():  # type: ignore[attr-defined]
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path == "/":
            self._send(200, {"service": "demo", "release": RELEASE, "host": HOST_NAME})
        elif self.path == "/version":
            self._send(200, {"release": RELEASE})
        elif self.path == "/healthz":
            if UNHEALTHY:
                self._send(500, {"status": "unhealthy", "release": RELEASE, "reason": f"built with demo_unhealthy={_UNHEALTHY}"})
            else:
                self._send(200, {"status": "ok", "release": RELEASE})
        else:
            self._send(404, {"error": "not found", "path": self.path})

    def do_POST(self) -> None:  # noqa: N802
        if self.path != "/echo":
            self._send(404, {"error": "not found", "path": self.path})
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._send(413, {"error": f"body over {MAX_BODY} bytes"})
            return
        body = self.rfile.read(length)
        self._send(200, body, self.headers.get("Content-Type") or "application/octet-stream")

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        print(json.dumps({"release": RELEASE, "client": self.client_address[0], "msg": format % args}), flush=True)


class Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins the request threads: in-flight requests finish
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("0.0.0.0", PORT), Handler)
        self.draining = threading.Event()


def healthcheck() -> int:
    """Docker's HEALTHCHECK, run inside the container: 0 when GET /healthz answers 200, else 1."""
    connection = HTTPConnection("127.0.0.1", PORT, timeout=3)  # direct: no proxy from the environment
    try:
        connection.request("GET", "/healthz")
        return 0 if connection.getresponse().status == 200 else 1
    except OSError:  # refused or timed out
        return 1
    finally:
        connection.close()


def main() -> None:
    if sys.argv[1:] == ["--healthcheck"]:
        sys.exit(healthcheck())
    server = Server()

    def stop(signum: int, _frame: object) -> None:
        server.draining.set()
        # shutdown() blocks until serve_forever returns, so it must run off the main thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(json.dumps({"release": RELEASE, "msg": f"listening on {PORT}", "unhealthy": UNHEALTHY}), flush=True)
    server.serve_forever(poll_interval=0.2)
    server.server_close()
    print(json.dumps({"release": RELEASE, "msg": "stopped after finishing in-flight requests"}), flush=True)


if __name__ == "__main__":
    main()
