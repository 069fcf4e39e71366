"""A real console for the tests: uvicorn in a subprocess, a SQLite file, ansible-runner jobs on fixture playbooks.

Beside it run a fake Docker registry (HTTP API v2, basic auth) and a fake chat webhook, both on 127.0.0.1.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
import pytest

from console_server import CONSOLE, REPO, Server
from console_server import start_server as start_console
from fleetdeploy.console.config import ROLL_EXTRA_VARS_SCHEMA

FIXTURES = Path(__file__).resolve().parent / "fixtures"

# The secrets the fixture inventories hold (vaulted) and the console is given: none may ever leak.
VAULT_PASSWORD = (FIXTURES / "vault-password").read_text().strip()
SECRETS = {
    "vault_fixture_secret": "s3cr3t-Fixture-Value-4242",
    "vault_inline_token": "inl1ne-t0ken-Zr8Kq",
    "vault_password": VAULT_PASSWORD,
    "registry_password": "registry-Pass-9vLm",
    # Vaulted where the redactor once did not look: a vars file beside the playbooks, a role's variable.
    "vault_extra_secret": "extra-Vaulted-Canary-7731",
    "fixture_secrets_token": "role-Vaulted-Canary-5518",
}
REPOSITORY = "fleetdeploy/web"
TAGS = ["v1.0.0", "v1.1.0", "v1.2.0", "v1.3.0", "v2.0.0"]
PASSWORDS = {"admin": "admin-password-1234", "deployer": "deployer-password-1234",
             "viewer": "viewer-password-1234", "stager": "stager-password-1234",
             "approver": "approver-password-1234"}  # approver: test_approvals.py's second deployer

# The address the tests' stand-in for nginx connects from (the console trusts its X-Forwarded-*).
PROXY = "127.0.0.2"

# Every response body the tests received, for the secret search.
SEEN: list[str] = []


class _Quiet(BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@dataclass
class FakeRegistry:
    url: str
    requests: list[str] = field(default_factory=list)


@pytest.fixture(scope="session")
def registry() -> Iterator[FakeRegistry]:
    """Docker Registry HTTP API v2, just /v2/ and tags/list, two tags a page with Link headers."""
    expected = "Basic " + base64.b64encode(f"ci:{SECRETS['registry_password']}".encode()).decode()
    state = FakeRegistry(url="")

    class Handler(_Quiet):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            state.requests.append(self.path)
            if self.headers.get("Authorization") != expected:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="registry"')
                self.end_headers()
                return
            url = urlparse(self.path)
            if url.path == "/v2/":
                return self._json({})
            m = re.fullmatch(r"/v2/(.+)/tags/list", url.path)
            if not m or m.group(1) != REPOSITORY:
                return self._json({"errors": [{"code": "NAME_UNKNOWN"}]}, 404)
            last = parse_qs(url.query).get("last", [""])[0]
            rest = TAGS[TAGS.index(last) + 1:] if last else TAGS
            page = rest[:2]
            headers = {}
            if len(rest) > 2:
                headers["Link"] = f'</v2/{REPOSITORY}/tags/list?n=2&last={page[-1]}>; rel="next"'
            self._json({"name": REPOSITORY, "tags": page}, 200, headers)

        def _json(self, body: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield state
    server.shutdown()


@pytest.fixture(scope="session")
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """The shared console's chat webhook."""
    with chat_webhook() as hook:
        yield hook


@contextlib.contextmanager
def chat_webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A chat webhook that records what the console posts: its URL, and the payloads."""
    received: list[dict[str, Any]] = []

    class Handler(_Quiet):
        def do_POST(self) -> None:  # noqa: N802
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    finally:
        server.shutdown()


# The built-in deploy's extra vars (release, per-service overrides, batch size, a note), two of the fixture
# deploy's, and one of each other kind the launch form renders.
INSPECT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        **ROLL_EXTRA_VARS_SCHEMA["properties"],
        "fixture_batch": {"type": "integer", "minimum": 1, "maximum": 6},
        "fixture_step": {"type": "number", "minimum": 0, "maximum": 5},
        "inspect_colour": {"enum": ["red", "green", "blue"], "description": "A choice"},
        "inspect_notify": {"type": "boolean", "default": True},
        "inspect_strict": {"type": "boolean"},
        "inspect_token": {"type": "string", "writeOnly": True},
    },
}


def write_config(root: Path, registry_url: str, webhook_url: str | None) -> Path:
    schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "release": {"type": "string"},
            "fixture_batch": {"type": "integer", "minimum": 1, "maximum": 6},
            "fixture_step": {"type": "number", "minimum": 0, "maximum": 5},
        },
    }
    config = {
        "project_dir": str(FIXTURES),
        "data_dir": str(root / "data"),
        "ansible_config": str(FIXTURES / "ansible.cfg"),
        "vault": {"password_env": "TEST_CONSOLE_VAULT_PASSWORD"},
        "registry": {"url": registry_url, "username": "ci", "password_env": "TEST_CONSOLE_REGISTRY_PASSWORD"},
        "environments": {
            "fleet": {"inventory": "inventories/fleet", "description": "six local hosts"},
            "broken": {"inventory": "inventories/broken", "description": "a failing and an unreachable host"},
            "staging": {"inventory": "inventories/fleet", "description": "same hosts, another lock"},
        },
        "actions": {
            "deploy": {"playbook": "playbooks/deploy.yml", "service": "web", "description": "Roll a release",
                       "release": {"variable": "release", "repository": REPOSITORY},
                       "extra_vars_schema": schema},
            "rollback": {"playbook": "playbooks/rollback.yml", "service": "web",
                         "release": {"variable": "release", "repository": REPOSITORY, "required": False}},
            "soak": {"playbook": "playbooks/long.yml", "role": "deployer", "description": "Sleep on every host"},
            "secrets": {"playbook": "playbooks/secrets.yml", "role": "deployer",
                        "description": "Print secrets from outside the inventory"},
            # The launch form's test action: the built-in deploy's schema, a field of every kind, and the
            # options (test_launch_form.py).
            "inspect": {"playbook": "playbooks/inspect.yml", "role": "deployer", "service": "inspect",
                        "description": "Print what the launch passed",
                        "release": {"variable": "release", "repository": REPOSITORY, "required": False},
                        "allow": ["limit", "check", "diff"], "extra_vars_schema": INSPECT_SCHEMA},
        },
        "retention": {"days": 30, "jobs": 100},
        # The tests' "nginx" connects from PROXY; a direct client (127.0.0.1) has its X-Forwarded-* ignored.
        "security": {"login_attempts": 5, "login_window_seconds": 300, "trusted_proxies": [PROXY]},
    }
    if webhook_url:
        config["notifications"] = {"webhook_url": webhook_url}
    path = root / "console.yml"
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    return path


@functools.cache
def _database_of(config: Path) -> str:
    from fleetdeploy.console.config import load

    return load(config).database


def job_processes(config: Path, job_id: int) -> list[int]:
    """The processes of one job of the console that runs with this config file (polled: the file is read once)."""
    from fleetdeploy.console.runner.process import job_marker, job_processes as marked

    return marked(job_marker(_database_of(config), job_id))


def process_cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""  # the process ended meanwhile


def process_environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""  # the process ended meanwhile


def wait_for_long_task(config: Path, job_id: int, timeout: float = 60, command: str = "sleep 90") -> None:
    """Wait until the soak playbook's `sleep 90` (or `command`) runs among the job's processes."""
    deadline = time.monotonic() + timeout
    while not any(process_cmdline(p).startswith(command) for p in job_processes(config, job_id)):
        assert time.monotonic() < deadline, f"job {job_id} never started its long task"
        time.sleep(0.1)


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    env["TEST_CONSOLE_VAULT_PASSWORD"] = VAULT_PASSWORD
    env["TEST_CONSOLE_REGISTRY_PASSWORD"] = SECRETS["registry_password"]
    env["PATH"] = f"{REPO / '.venv' / 'bin'}:{env.get('PATH', '')}"
    return env


def cli(config: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CONSOLE), *args, "--config", str(config)], input=stdin, capture_output=True,
                          text=True, env=server_env(), timeout=60, check=False)


def start_server(root: Path, config: Path) -> Server:
    return start_console(root, config, server_env())


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, registry: FakeRegistry,
           webhook: tuple[str, list[dict[str, Any]]]) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("console")
    config = write_config(root, registry.url, webhook[0])
    users = (("admin", "admin", None), ("deployer", "deployer", None), ("viewer", "viewer", None),
             ("stager", "deployer", "staging"))
    tokens = (("ci", "deployer"), ("ci-viewer", "viewer"), ("alertmanager", "alertmanager"))
    commands = [["create-user", name, "--role", role, "--password-stdin"] + (["--environments", e] if e else [])
                for name, role, e in users]
    commands += [["create-token", name, "--role", role] for name, role in tokens]
    # The CLI's own main(), once per command, in one interpreter: seven commands, one start-up.
    script = ("import sys; from fleetdeploy.console.cli import main\n"
              f"for args in {commands!r}:\n    main(args + ['--config', {str(config)!r}])\n")
    done = subprocess.run([str(REPO / ".venv" / "bin" / "python"), "-c", script, ], capture_output=True, text=True,
                          input="".join(PASSWORDS[u[0]] + "\n" for u in users), env=server_env(), timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    printed = done.stdout.splitlines()
    assert printed[0] == "user admin: admin on every environment"
    srv = start_server(root, config)
    srv.tokens.update(zip([t[0] for t in tokens], printed[len(users):], strict=True))
    yield srv
    srv.stop()


def _record(response: httpx.Response) -> None:
    if "text/event-stream" not in response.headers.get("content-type", ""):
        response.read()
        SEEN.append(response.text)
        SEEN.extend(f"{k}: {v}" for k, v in response.headers.items())


class Client:
    """A person (cookie session) or CI (bearer token) talking to the console."""

    def __init__(self, server: Server, user: str | None = None, token: str | None = None,
                 via_proxy: str | None = None) -> None:
        """`via_proxy`: connect from PROXY, as nginx would for a client at that address (X-Forwarded-For)."""
        self.server = server
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        transport = None
        if via_proxy:
            headers["X-Forwarded-For"] = via_proxy
            transport = httpx.HTTPTransport(local_address=PROXY)
        self.http = httpx.Client(base_url=server.url, headers=headers, timeout=30, transport=transport,
                                 event_hooks={"response": [_record]})
        self.csrf = ""
        if user:
            r = self.http.post("/login", data={"name": user, "password": PASSWORDS[user], "next": "/"})
            assert r.status_code == 303, r.text
            self.csrf = re.search(r'name="csrf" value="([^"]+)"', self.http.get("/").text).group(1)  # type: ignore[union-attr]

    def post(self, path: str, **kw: Any) -> httpx.Response:
        headers = kw.pop("headers", {})
        if self.csrf:
            headers.setdefault("X-CSRF-Token", self.csrf)
        return self.http.post(path, headers=headers, **kw)

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.http.get(path, **kw)

    def launch(self, environment: str, action: str = "deploy", release: str | None = "v1.2.0",
               **extra_vars: Any) -> int:
        r = self.post("/api/jobs", json={"environment": environment, "action": action, "release": release,
                                         "extra_vars": extra_vars})
        assert r.status_code == 201, r.text
        return int(r.json()["id"])

    def events(self, job_id: int, until: str = "end", timeout: float = 120) -> list[dict[str, Any]]:
        """Read the job's event stream until a message of type `until` (or the stream's end)."""
        out: list[dict[str, Any]] = []
        raw: list[str] = []
        with self.http.stream("GET", f"/api/jobs/{job_id}/events", timeout=timeout) as stream:
            assert stream.status_code == 200, stream.read()
            for line in stream.iter_lines():
                raw.append(line)
                if line.startswith("data:"):
                    msg = json.loads(line[5:])
                    out.append(msg)
                    if msg["type"] == until or msg["type"] == "end":
                        break
        SEEN.append("\n".join(raw))
        return out

    def wait(self, job_id: int, timeout: float = 120) -> dict[str, Any]:
        self.events(job_id, timeout=timeout)
        deadline = time.monotonic() + 60
        while True:
            job = self.get(f"/api/jobs/{job_id}").json()
            if job["status"] not in ("queued", "running") or time.monotonic() > deadline:
                return job  # type: ignore[no-any-return]
            time.sleep(0.1)


@pytest.fixture(scope="session")
def admin(server: Server) -> Client:
    return Client(server, "admin")


@pytest.fixture(scope="session")
def ci(server: Server) -> Client:
    return Client(server, token=server.tokens["ci"])


@pytest.fixture(scope="session")
def finished(ci: Client) -> dict[str, dict[str, Any]]:
    """A successful deploy on fleet and a failed one on broken, launched side by side."""
    fleet = ci.launch("fleet", release="v1.2.0", fixture_step=0)
    broken = ci.launch("broken", release="v1.2.0", fixture_step=0)
    return {"fleet": ci.wait(fleet), "broken": ci.wait(broken)}


@pytest.fixture(scope="session")
def staging_releases(ci: Client) -> tuple[dict[str, Any], dict[str, Any]]:
    """Two deploys of staging, v1.2.0 then v1.3.0 in batches of 3, for the release history: on staging,
    so that fleet's dashboard keeps what the other tests expect of it."""
    old = ci.wait(ci.launch("staging", release="v1.2.0", fixture_step=0))
    new = ci.wait(ci.launch("staging", release="v1.3.0", fixture_step=0, fixture_batch=3))
    return old, new
