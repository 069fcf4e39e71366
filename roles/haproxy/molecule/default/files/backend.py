"""Stand-in for an app host's nginx in the haproxy scenario: health check, identity and forwarded headers."""

from __future__ import annotations

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NAME = sys.argv[1]
PORT = int(sys.argv[2])


class Handler(BaseHTTPRequestHandler):
    """GET /healthz answers 200, /whoami the server's name, /forwarded the X-Forwarded-* it received."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (the name http.server dispatches to)
        if self.path == "/forwarded":
            text = f"for={self.headers.get('X-Forwarded-For')} proto={self.headers.get('X-Forwarded-Proto')}"
        elif self.path in ("/healthz", "/whoami"):
            text = NAME
        else:
            self.send_error(404)
            return
        body = (text + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (http.server's signature)
        """Stay quiet: health checks every 500 ms would fill the journal."""


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
