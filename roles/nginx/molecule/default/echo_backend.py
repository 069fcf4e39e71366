"""A stand-in for a service container: answers every request with what it received, as JSON."""

from __future__ import annotations

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Echo(BaseHTTPRequestHandler):
    # HTTP/1.1 so that nginx's upstream keepalive has something to keep alive.
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        received = self.rfile.read(length) if length else b""
        body = json.dumps(
            {
                "port": self.server.server_address[1],
                "path": self.path,
                "method": self.command,
                "version": self.request_version,
                "headers": {
                    name.lower(): value for name, value in self.headers.items()
                },
                "received_bytes": len(received),
                # Enough text for gzip to be worth it.
                "padding": "fleetdeploy " * 200,
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Echo).serve_forever()
