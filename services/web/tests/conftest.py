"""Fixtures of the web service's tests: its image built once per session as services/testing.py builds
every service's, the PostgreSQL and Redis every service's tests share (services/testing.py's backing
container, with a database and a Redis of the web's own), moto's server as S3, and web containers run
as a deploy runs them (read-only root, tmpfs /tmp, no capabilities, non-root).

The web containers use the host's network: they reach moto, the tracking stub (both in this process,
on 127.0.0.1) and the backing container's published ports the way the tests do. Names and ports carry
the test slot (FD_TEST_SLOT: testing.PREFIX, slot_port), so two checkouts never touch each other's."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import httpx
import psycopg
import pytest
from psycopg import sql

SERVICE = Path(__file__).resolve().parent.parent
REPO = SERVICE.parent.parent
sys.path.insert(0, str(REPO / "tests"))

import testing  # noqa: E402 (services/conftest.py puts services/ on the path)
from helpers import slot_port  # noqa: E402
from moto_endpoint import MotoEndpoint  # noqa: E402

PREFIX = f"{testing.PREFIX}-web"
BUCKET = "fd-web-test"

# Canary secrets: each must reach the service and must never show in its output.
DB_PASSWORD = f"pg-canary-{secrets.token_hex(8)}"
REDIS_PASSWORD = f"redis-canary-{secrets.token_hex(8)}"
SECRET_KEY = f"django-canary-{secrets.token_hex(24)}"
AWS_SECRET = f"aws-canary-{secrets.token_hex(8)}"
CANARIES = (DB_PASSWORD, REDIS_PASSWORD, SECRET_KEY, AWS_SECRET)

# The web's Redis: a second redis-server in the shared backing container, on its spare port, because a test
# stops it (stopping the shared one would fail the other services' tests running meanwhile). As the lab's
# Redis is set up: an ACL user `web` and no default user.
REDIS_SETUP = f"""set -eu
cat > /etc/redis/fd-web-test.conf <<CONF
bind * -::*
port {testing.SPARE_REDIS_PORT}
protected-mode no
daemonize yes
save ""
appendonly no
dir /tmp
user default off
user web on >$REDISPW ~* &* +@all
CONF
chown redis /etc/redis/fd-web-test.conf
"""
REDIS_START = "su redis -s /bin/sh -c 'redis-server /etc/redis/fd-web-test.conf'"


def docker(*args: str, check: bool = True, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check, **kwargs)  # type: ignore[call-overload]


def wait_until(what: str, ready: object, timeout: float = 120, step: float = 0.3) -> None:
    """Wait until `ready()` is true (a state, never a speed: the deadline only stops a hung test)."""
    deadline = time.monotonic() + timeout
    while not ready():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(step)


@pytest.fixture(scope="session")
def image(backing: Backing) -> str:
    """The web image, built as roles/image_build builds it, once per session (services/testing.py)."""
    return testing.build_image("web")


@dataclass
class Backing:
    """The web's part of the services' shared backing (services/testing.py): its own database, owned by
    the role `web`, and its own Redis on the spare port."""

    shared: testing.Backing
    database: str

    @property
    def pg_port(self) -> int:
        return self.shared.pg_port

    @property
    def redis_port(self) -> int:
        return self.shared.spare_redis_port

    def redis_cli(self, *args: str) -> str:
        done = docker("exec", "-e", f"REDISCLI_AUTH={REDIS_PASSWORD}", testing.BACKING, "redis-cli", "-p",
                      str(testing.SPARE_REDIS_PORT), "--user", "web", "--no-auth-warning", *args, check=False)
        return done.stdout.strip()

    def stop_redis(self) -> None:
        self.redis_cli("shutdown", "nosave")
        wait_until("Redis to stop", lambda: self.redis_cli("ping") != "PONG")

    def start_redis(self) -> None:
        docker("exec", testing.BACKING, "sh", "-c", REDIS_START)
        wait_until("Redis to answer", lambda: self.redis_cli("ping") == "PONG")


@pytest.fixture(scope="session")
def backing(backing: testing.Backing) -> Iterator[Backing]:
    """The shared backing, with the web's database (the role `web` takes the canary password: it
    may set its own) and the web's Redis started."""
    env = backing.database("web", "web", 0)
    with psycopg.connect(backing.pg_conninfo(env["PGDATABASE"], "web"), autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER ROLE web PASSWORD {}").format(sql.Literal(DB_PASSWORD)))
    done = testing.exec_in_backing(REDIS_SETUP, {"REDISPW": REDIS_PASSWORD})
    assert done.returncode == 0, done.stderr
    result = Backing(shared=backing, database=env["PGDATABASE"])
    result.redis_cli("shutdown", "nosave")  # one left by an interrupted run of this session's backing
    result.start_redis()
    try:
        yield result
    finally:
        result.redis_cli("shutdown", "nosave")


@pytest.fixture(scope="session")
def s3() -> Iterator[MotoEndpoint]:
    with MotoEndpoint() as endpoint:
        client = boto3.client("s3", endpoint_url=endpoint.url, region_name="eu-west-1",
                              aws_access_key_id="testing", aws_secret_access_key=AWS_SECRET)
        client.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
        # What the object store's setup must do for the web: anyone may read static/, nothing else.
        client.put_bucket_policy(Bucket=BUCKET, Policy=json.dumps({"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
            "Resource": f"arn:aws:s3:::{BUCKET}/static/*"}]}))
        yield endpoint


@dataclass
class Tracking:
    """A stand-in for the tracking service: GET /tracking/parcels/<code>, as services/tracking answers it. With `hold` set, an answer waits
    until the test lets it go; `arrived` says a request is being held."""

    url: str = ""
    parcels: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    hold: threading.Event | None = None
    arrived: threading.Event = field(default_factory=threading.Event)


@pytest.fixture(scope="session")
def tracking() -> Iterator[Tracking]:
    state = Tracking(parcels={"FD-1001": [{"occurred_at": "2026-12-01T09:00:00Z", "location": "Lyon", "status": "collected"},
                                          {"occurred_at": "2026-12-02T07:30:00Z", "location": "Paris", "status": "out for delivery"}]})

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            code = self.path.removeprefix("/tracking/parcels/")
            if state.hold is not None:
                state.arrived.set()
                state.hold.wait(120)
            found = code in state.parcels
            body = json.dumps({"code": code, "events": state.parcels[code]} if found else {"error": "no such parcel"}).encode()
            try:
                self.send_response(200 if found else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except BrokenPipeError:  # the web gave up waiting, as the timeout test wants
                pass

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_port}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield state
    server.shutdown()


@dataclass
class Web:
    """One web container on the host's network, answering on 127.0.0.1:port."""

    name: str
    port: int
    kept_logs: tuple[str, str] | None = None  # stdout and stderr from before it was removed

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def streams(self) -> tuple[str, str]:
        """What the container wrote to stdout and to stderr."""
        if self.kept_logs is not None:
            return self.kept_logs
        done = docker("logs", self.name, check=False)
        return done.stdout, done.stderr

    def logs(self) -> str:
        return "".join(self.streams())

    def remove(self) -> None:
        if self.kept_logs is None:
            self.kept_logs = self.streams()
        docker("rm", "-f", self.name, check=False)


class Fleet:
    """Starts web containers and runs the release tasks, each with the service's environment."""

    def __init__(self, image: str, backing: Backing, s3: MotoEndpoint, tracking: Tracking, folder: Path) -> None:
        self.image, self.folder = image, folder
        self.env = {
            "DJANGO_SECRET_KEY": SECRET_KEY,
            "DATABASE_URL": f"postgresql://web@127.0.0.1:{backing.pg_port}/{backing.database}",
            "DATABASE_PASSWORD": DB_PASSWORD,
            "REDIS_URL": f"redis://web@127.0.0.1:{backing.redis_port}/0",
            "REDIS_PASSWORD": REDIS_PASSWORD,
            "S3_ENDPOINT_URL": s3.url,
            "S3_BUCKET": BUCKET,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
            "AWS_REGION": "eu-west-1",
            "TRACKING_URL": tracking.url,
            "TRACKING_TIMEOUT": "2",
            "SESSION_COOKIE_SECURE": "false",
        }
        self.started: list[Web] = []

    def _env_file(self, overrides: dict[str, str]) -> Path:
        path = self.folder / f"env-{secrets.token_hex(4)}"
        path.write_text("".join(f"{k}={v}\n" for k, v in {**self.env, **overrides}.items()))
        path.chmod(0o600)
        return path

    def _run_args(self, overrides: dict[str, str]) -> list[str]:
        # The hardening roles/app_release applies (docs/security.md).
        return ["--network", "host", "--read-only", "--tmpfs", "/tmp:size=64m", "--cap-drop", "ALL",
                "--security-opt", "no-new-privileges:true", "--pids-limit", "2048",
                "--env-file", str(self._env_file(overrides))]

    def task(self, *command: str, stdin: str | None = None, **overrides: str) -> subprocess.CompletedProcess[str]:
        """A release task: a throw-away container of the image running one command."""
        return docker("run", "--rm", "-i", *self._run_args(overrides), self.image, *command, input=stdin,
                      check=False, timeout=600)

    def start(self, name: str, port: int, wait: bool = True, **overrides: str) -> Web:
        web = Web(name=f"{PREFIX}-{name}", port=port)
        docker("rm", "-f", web.name, check=False)  # a leftover of an interrupted run
        docker("run", "-d", "--name", web.name, *self._run_args({"PORT": str(port), **overrides}), self.image)
        self.started.append(web)
        if wait:
            def answers() -> bool:
                state = docker("inspect", "-f", "{{.State.Running}}", web.name, check=False).stdout.strip()
                assert state == "true", f"{web.name} stopped:\n{web.logs()}"
                try:
                    return httpx.get(f"{web.url}/healthz", timeout=2).status_code == 200
                except httpx.TransportError:
                    return False
            wait_until(f"{web.name} to answer", answers)
        return web


@pytest.fixture(scope="module")
def fleet(image: str, backing: Backing, s3: MotoEndpoint, tracking: Tracking,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    result = Fleet(image, backing, s3, tracking, tmp_path_factory.mktemp("web-env"))
    yield result
    for web in result.started:
        web.remove()


def web_port(index: int) -> int:
    return slot_port(29700 + index)
