"""moto in server mode on 127.0.0.1: a real HTTP endpoint that boto3, the aws_ec2 inventory and the
amazon.aws/community.aws modules reach through AWS_ENDPOINT_URL. Every call is recorded with its time,
so tests can check the order in which a deploy talked to the load balancer."""

from __future__ import annotations

import io
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import make_server


@dataclass
class Call:
    time: float
    action: str
    params: dict[str, list[str]]


@dataclass
class Recorder:
    calls: list[Call] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def actions(self, *names: str) -> list[Call]:
        with self.lock:
            return [c for c in self.calls if not names or c.action in names]


class RecordingApp:
    def __init__(self, app: Any, recorder: Recorder) -> None:
        self.app, self.recorder = app, recorder

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        params = urllib.parse.parse_qs(body.decode(errors="replace")) if body else {}
        params.update(urllib.parse.parse_qs(environ.get("QUERY_STRING", "")))
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        action = (params.get("Action") or [target.rsplit(".", 1)[-1] if target else environ.get("PATH_INFO", "")])[0]
        with self.recorder.lock:
            self.recorder.calls.append(Call(time.time(), action, params))
        return self.app(environ, start_response)


class MotoEndpoint:
    def __init__(self) -> None:
        self.recorder = Recorder()
        app = RecordingApp(DomainDispatcherApplication(create_backend_app), self.recorder)
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "MotoEndpoint":
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.shutdown()

    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "eu-west-1",
            "AWS_REGION": "eu-west-1",
        }
