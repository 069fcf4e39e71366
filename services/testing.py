"""What the services' tests share: their images, built as roles/image_build builds them, and one
throw-away PostgreSQL + Redis that every service's tests use.

The backing container runs Debian's postgresql and redis-server, installed into the lab's Debian 12
host image (as tests/console/test_postgresql.py does) and started by hand, with one database and
role per service and a Redis password. Service containers reach it on a network of their own as
`backing`; the tests reach it on ports published on 127.0.0.1. Test processes (xdist workers
included) share it: each registers its pid in a lock file, and the last one out removes it. Each test
module gets a database of its own (Backing.database), owned by its service's role, so modules that
xdist runs at once on different workers never touch each other's tables. Each service's image is
built once per session, whichever worker asks first; the others wait on its lock and reuse it.
Passwords reach containers through 0600 env files, never on a command line or in an error message.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers import SLOT_SUFFIX

SERVICES = Path(__file__).resolve().parent
HOST_IMAGE = "fleetdeploy/host:debian12"
PREFIX = f"fd{SLOT_SUFFIX}-services"
BACKING = f"{PREFIX}-backing"
NETWORK = f"{PREFIX}-net"
# Lock files and env files: in a folder only this user can enter (they hold the throw-away passwords).
STATE_DIR = Path(tempfile.gettempdir()) / f"fleetdeploy-{os.getuid()}"
LOCK = STATE_DIR / f"{PREFIX}-backing.json"
# The CAs the build host trusts beyond Debian's, as roles/image_build puts them into every build context.
LOCAL_CA_DIR = Path("/usr/local/share/ca-certificates")
SERVICE_DATABASES = ("tracking", "postcode", "web")
# A port of the backing container left for a Redis a test may stop (services/web/tests/conftest.py): stopping
# the shared one would fail the other modules that xdist runs meanwhile.
SPARE_REDIS_PORT = 6380

SETUP = r"""set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends postgresql redis-server >/dev/null
version=$(ls /etc/postgresql)
pg_conftool "$version" main set listen_addresses '*'
echo 'host all all 0.0.0.0/0 scram-sha-256' >> "/etc/postgresql/$version/main/pg_hba.conf"
pg_ctlcluster "$version" main stop 2>/dev/null || true
pg_ctlcluster "$version" main start
for db in $DATABASES; do
  su postgres -c "psql -q -v ON_ERROR_STOP=1 -c \"CREATE ROLE $db LOGIN PASSWORD '$PGPW'\""
  su postgres -c "createdb -O $db $db"
done
redis-server --daemonize yes --bind '0.0.0.0' --protected-mode no --requirepass "$REDISPW" \
  --save '' --appendonly no --logfile /var/log/redis-test.log
"""


@dataclass
class Backing:
    """The shared PostgreSQL + Redis: from service containers at `backing`, from tests at the ports."""

    pg_password: str
    redis_password: str
    pg_port: int
    redis_port: int
    spare_redis_port: int

    def service_env(self, database: str, redis_db: int) -> dict[str, str]:
        """The environment a service container needs to reach its database and Redis."""
        return {"PGHOST": "backing", "PGPORT": "5432", "PGDATABASE": database, "PGUSER": database,
                "PGPASSWORD": self.pg_password, "REDIS_URL": f"redis://backing:6379/{redis_db}",
                "REDIS_PASSWORD": self.redis_password}

    def pg_conninfo(self, database: str, role: str | None = None) -> str:
        """From the tests: `database` as `role` (the service's role, by default the database's name)."""
        return (f"host=127.0.0.1 port={self.pg_port} dbname={database} user={role or database} "
                f"password={self.pg_password} application_name=test")

    def database(self, service: str, name: str, redis_db: int) -> dict[str, str]:
        """A new, empty database `name` owned by the service's role (one left by an earlier run is
        dropped first); the service_env that points at it."""
        assert re.fullmatch(r"[a-z][a-z0-9_]*", name) and service in SERVICE_DATABASES, (service, name)
        _docker("exec", BACKING, "su", "postgres", "-c",
                f"dropdb --if-exists --force {name} && createdb -O {service} {name}")
        return {**self.service_env(service, redis_db), "PGDATABASE": name}

    def redis(self, db: int) -> "Redis":
        return Redis(self.redis_port, self.redis_password, db)


def _redacted(args: tuple[str, ...]) -> str:
    """The argument list with every `-e NAME=value` shown as `-e NAME=...` (a value may be a secret)."""
    shown = [f"{arg.split('=', 1)[0]}=..." if before == "-e" and "=" in arg else arg
             for before, arg in zip(("", *args), args)]
    return " ".join(shown)


# Runs `python3 ARGS...` (-m MODULE or a script) in this interpreter and, at exit, prints the top-level
# names of the modules it loaded on stderr's last line.
_LOADED_AT_EXIT = """\
import atexit, runpy, sys
def loaded():
    print(" ".join(sorted({name.split(".")[0] for name in sys.modules} - {"__main__"})), file=sys.stderr)
atexit.register(loaded)
args = sys.argv[1:]
if args[0] == "-m":
    sys.argv = args[1:]
    runpy.run_module(args[1], run_name="__main__", alter_sys=True)
else:
    sys.argv = args
    runpy.run_path(args[0], run_name="__main__")
"""


def _docker(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"docker {_redacted(args)} failed: {done.stdout}{done.stderr}")
    return done


def _state_dir() -> Path:
    """STATE_DIR, made 0700 if missing; refused unless it is a real folder of this user's."""
    STATE_DIR.mkdir(mode=0o700, exist_ok=True)
    info = STATE_DIR.lstat()
    assert stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o077, \
        f"{STATE_DIR} must be a folder of uid {os.getuid()} that no one else may enter"
    return STATE_DIR


def _private(path: Path) -> int:
    """Open (create) a file of STATE_DIR for reading and writing, 0600, never through a symbolic link."""
    _state_dir()
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)


@contextmanager
def _env_file(env: dict[str, str]) -> Iterator[list[str]]:
    """`--env-file <0600 file>` arguments holding env; the file is removed once docker has read it."""
    path = _state_dir() / f"env-{secrets.token_hex(8)}"
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600), "w") as handle:
        for key, value in env.items():
            assert "\n" not in value and "\n" not in key, key  # an env file holds one variable a line
            handle.write(f"{key}={value}\n")
    try:
        yield ["--env-file", str(path)]
    finally:
        path.unlink(missing_ok=True)


def _published(container: str, port: str) -> int:
    return int(_docker("port", container, port).stdout.split()[0].rsplit(":", 1)[1])


@contextmanager
def _registry() -> Iterator[dict[str, Any]]:
    """The shared record {pids, passwords}, under an exclusive lock, written back on exit."""
    with os.fdopen(_private(LOCK), "r+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        record = json.loads(handle.read() or "{}")
        yield record
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(record))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _start_backing() -> dict[str, str]:
    _docker("rm", "-f", BACKING, check=False)
    if _docker("network", "inspect", NETWORK, check=False).returncode != 0:
        _docker("network", "create", NETWORK)
    passwords = {"pg": f"pg-{secrets.token_hex(12)}", "redis": f"redis-{secrets.token_hex(12)}"}
    _docker("run", "-d", "--name", BACKING, "--label", "fleetdeploy.test=services-backing", "--network", NETWORK,
            "--network-alias", "backing", "-p", "127.0.0.1::5432", "-p", "127.0.0.1::6379",
            "-p", f"127.0.0.1::{SPARE_REDIS_PORT}",
            "--entrypoint", "sleep", HOST_IMAGE, "infinity")
    with _env_file({"PGPW": passwords["pg"], "REDISPW": passwords["redis"],
                    "DATABASES": " ".join(SERVICE_DATABASES)}) as env_args:
        _docker("exec", *env_args, BACKING, "bash", "-c", SETUP)
    return passwords


def acquire_backing() -> Backing:
    """Start the backing container unless a live test process uses it already; register this one."""
    with _registry() as record:
        users = [pid for pid in record.get("pids", []) if _alive(pid)]
        running = _docker("inspect", "-f", "{{.State.Running}}", BACKING, check=False).stdout.strip() == "true"
        if not users or not running:
            record["passwords"] = _start_backing()
        record["pids"] = [*users, os.getpid()]
        passwords = record["passwords"]
    return Backing(passwords["pg"], passwords["redis"], _published(BACKING, "5432/tcp"),
                   _published(BACKING, "6379/tcp"), _published(BACKING, f"{SPARE_REDIS_PORT}/tcp"))


def exec_in_backing(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run a bash script as root in the backing container, env passed through a 0600 env file."""
    with _env_file(env) as env_args:
        return _docker("exec", *env_args, BACKING, "bash", "-c", script, check=False)


def release_backing() -> None:
    """Unregister this process; the last one removes the container and its network."""
    with _registry() as record:
        users = [pid for pid in record.get("pids", []) if _alive(pid) and pid != os.getpid()]
        record["pids"] = users
        if not users:
            _docker("rm", "-f", BACKING, check=False)
            _docker("network", "rm", NETWORK, check=False)


# The label that carries the digest of the build context a test image was built from (build_image).
CONTEXT_LABEL = "org.fleetdeploy.test.context"


def build_context(service: str, folder: Path) -> None:
    """Fill `folder` with the build context of services/<service>, by the rule roles/image_build follows
    (services/shared/README.md): the service's folder, services/shared/ as shared/, and the CAs this
    host trusts beyond Debian's as extra-ca.crt. Tests and caches are left out."""
    skip = shutil.ignore_patterns("tests", "__pycache__")
    shutil.copytree(SERVICES / service, folder, dirs_exist_ok=True, ignore=skip)
    shutil.copytree(SERVICES / "shared", folder / "shared", dirs_exist_ok=True, ignore=skip)
    cas = sorted(LOCAL_CA_DIR.rglob("*.crt")) if LOCAL_CA_DIR.is_dir() else []
    (folder / "extra-ca.crt").write_text("".join(ca.read_text() for ca in cas))


def build_image(service: str) -> str:
    """Build services/<service> from the host image as BASE_IMAGE, as the build playbook would; its tag.
    The image is labelled with a digest of its build context and base image, and reused while both are the
    same, so a session (or another checkout on this machine) never runs an image of other sources."""
    tag = f"{PREFIX}/{service}:test"
    with os.fdopen(_private(STATE_DIR / f"{PREFIX}-build-{service}.lock"), "r+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with tempfile.TemporaryDirectory(prefix=f"{PREFIX}-{service}-") as context:
            build_context(service, Path(context))
            # The base image's id too: a rebuilt host image must rebuild the service's image.
            digest = hashlib.sha256(_docker("image", "inspect", "-f", "{{.Id}}", HOST_IMAGE).stdout.encode())
            for path in sorted(p for p in Path(context).rglob("*") if p.is_file()):
                digest.update(f"{path.relative_to(context)}\0{path.stat().st_mode & 0o777:o}\0".encode())
                digest.update(path.read_bytes())
            built = _docker("image", "inspect", "-f", "{{index .Config.Labels \"%s\"}}" % CONTEXT_LABEL, tag,
                            check=False).stdout.strip()
            if built != digest.hexdigest():
                _docker("build", "-q", "-t", tag, "--label", f"{CONTEXT_LABEL}={digest.hexdigest()}",
                        "--build-arg", f"BASE_IMAGE={HOST_IMAGE}", "--build-arg", "RELEASE=test", context, timeout=1800)
    return tag


@dataclass
class Container:
    """A service container, run hardened as roles/app_release runs it."""

    name: str
    port: int | None = None
    _logs_seen: list[str] = field(default_factory=list)

    @classmethod
    def run(cls, image: str, name: str, env: dict[str, str], *command: str, publish: bool = True) -> "Container":
        _docker("rm", "-f", name, check=False)
        args = ["run", "-d", "--name", name, "--network", NETWORK, "--read-only", "--tmpfs", "/tmp:size=64m",
                "--cap-drop", "ALL", "--security-opt", "no-new-privileges:true", "--pids-limit", "2048"]
        if publish:
            args += ["-p", "127.0.0.1::8000"]
        with _env_file(env) as env_args:
            _docker(*args, *env_args, image, *command)
        container = cls(name)
        if publish:
            container.port = _published(name, "8000/tcp")
        return container

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def logs(self) -> str:
        done = _docker("logs", self.name, check=False)
        return done.stdout + done.stderr

    def state(self) -> dict[str, Any]:
        return json.loads(_docker("inspect", "-f", "{{json .State}}", self.name).stdout)

    def wait_for_log(self, text: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.logs():
            assert time.monotonic() < deadline, f"{self.name} never logged {text!r}:\n{self.logs()[-3000:]}"
            assert self.state()["Status"] in ("running", "created") or text in self.logs(), self.logs()[-3000:]
            time.sleep(0.2)

    def wait_until_answers(self, path: str = "/healthz", timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port or 0), timeout=2) as sock:
                    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".encode())
                    if sock.recv(64).startswith(b"HTTP/1.1 200"):
                        return
            except OSError:
                pass
            assert self.state()["Status"] == "running", f"{self.name} stopped:\n{self.logs()[-3000:]}"
            assert time.monotonic() < deadline, f"{self.name} never answered {path}:\n{self.logs()[-3000:]}"
            time.sleep(0.2)

    def healthcheck_command(self) -> list[str]:
        """The image's HEALTHCHECK command (its CMD form)."""
        test = json.loads(_docker("inspect", "-f", "{{json .Config.Healthcheck.Test}}", self.name).stdout)
        assert test[0] == "CMD", test
        return test[1:]

    def healthcheck(self) -> int:
        """The exit code of the image's HEALTHCHECK command, run in the container now."""
        return _docker("exec", self.name, *self.healthcheck_command(), check=False).returncode

    def healthcheck_imports(self) -> set[str]:
        """The top-level packages loaded when the image's HEALTHCHECK (python3 -m MODULE ... or python3 SCRIPT ...)
        exits, run now; the command must succeed. (-X importtime would also list imports that were only tried.)"""
        command = self.healthcheck_command()
        assert command[0] == "python3", command
        ran = _docker("exec", self.name, "python3", "-c", _LOADED_AT_EXIT, *command[1:], check=False)
        assert ran.returncode == 0, ran.stderr[-2000:]
        return set(ran.stderr.splitlines()[-1].split())

    def signal(self, name: str) -> None:
        _docker("kill", "-s", name, self.name)

    def wait_exit(self, timeout: float = 120) -> int:
        """The exit code, once the container has stopped."""
        done = _docker("wait", self.name, timeout=timeout)
        return int(done.stdout.strip())

    def remove(self) -> None:
        _docker("rm", "-f", self.name, check=False)


@contextmanager
def serving(image: str, name: str, env: dict[str, str], *command: str) -> Iterator[Container]:
    """A service container that answers GET /healthz on its published port; removed on exit."""
    container = Container.run(image, name, env, *command)
    try:
        container.wait_until_answers()
        yield container
    finally:
        container.remove()


def run_once(image: str, name: str, env: dict[str, str], *command: str) -> subprocess.CompletedProcess[str]:
    """A one-off container (a release task), hardened like the service's, removed when it ends."""
    args = ["run", "--rm", "--name", name, "--network", NETWORK, "--read-only", "--tmpfs", "/tmp:size=64m",
            "--cap-drop", "ALL", "--security-opt", "no-new-privileges:true"]
    with _env_file(env) as env_args:
        return _docker(*args, *env_args, image, *command, check=False)


# What a migration may not do while the release before it still runs (the services' READMEs,
# "Migrations"): drop, rename, empty a table, change a column's type, or make an existing table's
# column required. Those are the contract step, for a later release.
_CONTRACT = re.compile(r"\b(DROP\s+(TABLE|COLUMN|VIEW|TYPE|SCHEMA|FUNCTION)|RENAME|TRUNCATE)\b", re.IGNORECASE)
# In an ALTER TABLE only (a new table's NOT NULL columns break nothing).
_CONTRACT_ALTER = re.compile(r"\bALTER\s+COLUMN\s+\S+\s+(SET\s+DATA\s+)?TYPE\b|\bSET\s+NOT\s+NULL\b"
                             r"|\bADD\s+(COLUMN\s+)?(?![^,]*\bDEFAULT\b)[^,]*\bNOT\s+NULL\b", re.IGNORECASE)


def contract_statements(sql: str) -> list[str]:
    """The statements of a migration that would break the release still running on the old schema."""
    statements = [part.strip() for part in re.sub(r"--[^\n]*", "", sql).split(";")]
    return [s for s in statements if _CONTRACT.search(s)
            or (re.match(r"ALTER\s+TABLE\b", s, re.IGNORECASE) and _CONTRACT_ALTER.search(s))]


def migrations_of(service: str) -> dict[str, str]:
    """{file name: SQL} of a service's migrations."""
    folder = SERVICES / service / service / "migrations"
    return {path.name: path.read_text() for path in sorted(folder.glob("*.sql"))}


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of a container's output as JSON (a line that is not JSON fails the test)."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


class Redis:
    """Just enough of the Redis protocol (RESP2) for the tests to look into the queue and the cache."""

    def __init__(self, port: int, password: str, db: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.reader = self.sock.makefile("rb")
        self("AUTH", password)
        self("SELECT", str(db))

    def __call__(self, *args: str) -> Any:
        parts = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            data = arg.encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self.sock.sendall(b"".join(parts))
        return self._reply()

    def _reply(self) -> Any:
        line = self.reader.readline().rstrip(b"\r\n")
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            if int(rest) < 0:
                return None
            data = self.reader.read(int(rest) + 2)[:-2]
            return data.decode()
        if kind == b"*":
            return None if int(rest) < 0 else [self._reply() for _ in range(int(rest))]
        raise RuntimeError(f"unexpected reply {line!r}")

    def close(self) -> None:
        self.reader.close()
        self.sock.close()
