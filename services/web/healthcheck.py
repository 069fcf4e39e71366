"""The image's HEALTHCHECK: exit 0 when GET /healthz on the container's own port answers 200, else 1."""

import os
import sys
from http.client import HTTPConnection

connection = HTTPConnection("127.0.0.1", int(os.environ.get("PORT", "8000")), timeout=3)
try:
    connection.request("GET", "/healthz", headers={"Host": "localhost"})
    sys.exit(0 if connection.getresponse().status == 200 else 1)
except OSError:
    sys.exit(1)
