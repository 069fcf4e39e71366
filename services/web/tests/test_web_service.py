"""The web service for real: its image on the machine's Docker engine, Debian's PostgreSQL and Redis,
moto's server as S3, a stand-in tracking service. Sessions outlive the container that made them,
uploads come back byte for byte from S3, /readyz follows Redis, the parcel page survives a tracking
service that is down, and SIGTERM lets the request in flight finish."""

from __future__ import annotations

import json
import re
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import boto3
import httpx
import pytest

from conftest import AWS_SECRET, BUCKET, CANARIES, SERVICE, Backing, Fleet, Tracking, Web, docker, wait_until, web_port
from moto_endpoint import MotoEndpoint

pytestmark = pytest.mark.slow

USER, PASSWORD = "demo", f"demo-{secrets.token_hex(8)}"


@dataclass
class App:
    web: Web
    migrated: list[str]
    collected: str


@pytest.fixture(scope="module")
def app(fleet: Fleet) -> Iterator[App]:
    """The release tasks, then one web container."""
    migrated = []
    for _ in range(2):
        done = fleet.task("manage.py", "migrate", "--noinput")
        assert done.returncode == 0, done.stdout + done.stderr
        migrated.append(done.stdout)
    collected = fleet.task("manage.py", "collectstatic", "--noinput")
    assert collected.returncode == 0, collected.stdout + collected.stderr
    user = fleet.task("manage.py", "ensure_user", USER, stdin=PASSWORD + "\n")
    assert user.returncode == 0 and f"user {USER} created" in user.stdout, user.stdout + user.stderr
    yield App(web=fleet.start("a", web_port(0)), migrated=migrated, collected=collected.stdout)


def signed_in(web: Web) -> httpx.Client:
    client = httpx.Client(base_url=web.url, timeout=30)
    client.get("/accounts/login/").raise_for_status()
    answer = client.post("/accounts/login/", data={"username": USER, "password": PASSWORD,
                                                   "csrfmiddlewaretoken": client.cookies["csrftoken"]})
    assert answer.status_code == 302 and answer.headers["location"] == "/", answer.text[-2000:]
    return client


def test_the_release_tasks_migrate_and_publish_hashed_static_files(app: App, s3: MotoEndpoint) -> None:
    assert "Applying fdweb.0001_initial" in app.migrated[0]
    assert "No migrations to apply" in app.migrated[1]
    assert "static file" in app.collected and "post-processed" in app.collected
    page = httpx.get(f"{app.web.url}/", timeout=30)
    assert page.status_code == 200
    assert page.headers["connection"] == "close"  # nginx must not keep a connection uWSGI closes
    css = re.search(rf'href="({re.escape(s3.url)}/{BUCKET}/static/fdweb/site\.[0-9a-f]{{12}}\.css)"', page.text)
    assert css, page.text
    served = httpx.get(css[1], timeout=30)
    assert served.status_code == 200
    assert served.content == (SERVICE / "fdweb" / "static" / "fdweb" / "site.css").read_bytes()


def manifest_reads(s3: MotoEndpoint, bucket: str = BUCKET) -> int:
    """Requests for the manifest (a read is HEAD, HEAD, GET: django-storages asks whether it exists first)."""
    return len([call for call in s3.recorder.actions() if call.action == f"/{bucket}/static/staticfiles.json"])


def test_a_new_container_reads_the_static_manifest_once_before_it_serves(app: App, fleet: Fleet,
                                                                          s3: MotoEndpoint) -> None:
    """The manifest of hashed static names is read from S3 once, when the container starts: no page of a
    new container waits on S3 for it (in a CI deploy, one first page per worker did, and one took over 10 s)."""
    before = manifest_reads(s3)
    web = fleet.start("warm", web_port(3))
    try:
        started = manifest_reads(s3)
        assert started > before  # read while the container started
        with ThreadPoolExecutor(8) as pool:  # more pages at once than the container has workers (4)
            pages = list(pool.map(lambda _: httpx.get(f"{web.url}/", timeout=30), range(16)))
        assert [page.status_code for page in pages] == [200] * 16
        assert all(re.search(r"/static/fdweb/site\.[0-9a-f]{12}\.css", page.text) for page in pages)
        assert manifest_reads(s3) == started
    finally:
        web.remove()


def test_without_its_static_manifest_the_web_stops_at_start_with_one_line(fleet: Fleet, s3: MotoEndpoint) -> None:
    """A bucket where `collectstatic` never ran: the container exits 78 at once with one line saying what to
    run, instead of answering every page with a 500."""
    bucket = f"{BUCKET}-unpublished"
    boto3.client("s3", endpoint_url=s3.url, region_name="eu-west-1", aws_access_key_id="testing",
                 aws_secret_access_key=AWS_SECRET).create_bucket(
        Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    web = fleet.start("unpublished", web_port(3), wait=False, S3_STATIC_BUCKET=bucket)
    try:
        assert docker("wait", web.name, timeout=120).stdout.strip() == "78", web.logs()[-3000:]
        stdout, _ = web.streams()
        errors = [entry for entry in map(json.loads, stdout.splitlines()) if entry.get("level") == "error"]
        assert [entry["msg"] for entry in errors] == [
            f"cannot start: no static manifest at s3://{bucket}/static/staticfiles.json: "
            "run the release task `manage.py collectstatic --noinput` first"], stdout[-3000:]
    finally:
        web.remove()


def test_a_sign_in_survives_the_container_being_replaced(app: App, fleet: Fleet, backing: Backing) -> None:
    assert httpx.get(f"{app.web.url}/api/me", timeout=30).status_code == 401
    client = signed_in(app.web)
    assert client.get("/api/me").json() == {"username": USER}
    session = client.cookies["sessionid"]
    assert backing.redis_cli("exists", f"session:1:django.contrib.sessions.cache{session}") == "1"

    app.web.remove()
    other = fleet.start("b", web_port(1))
    try:
        again = httpx.Client(base_url=other.url, cookies=client.cookies, timeout=30)
        assert again.get("/api/me").json() == {"username": USER}
        assert again.get("/uploads/").status_code == 200
    finally:
        other.remove()
        app.web = fleet.start("a", web_port(0))


def test_an_upload_round_trips_byte_for_byte_through_s3(app: App, s3: MotoEndpoint) -> None:
    client = signed_in(app.web)
    content = secrets.token_bytes(3 * 1024 * 1024 + 17)  # above the 2.5 MB kept in memory: spooled to /tmp
    posted = client.post("/api/uploads", files={"file": ("report.bin", content, "application/octet-stream")},
                         headers={"X-CSRFToken": client.cookies["csrftoken"]})
    assert posted.status_code == 201, posted.text
    upload = posted.json()
    downloaded = client.get(upload["download"])
    assert downloaded.status_code == 200 and downloaded.content == content

    bucket = boto3.client("s3", endpoint_url=s3.url, region_name="eu-west-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing")
    keys = [o["Key"] for o in bucket.list_objects_v2(Bucket=BUCKET, Prefix="uploads/")["Contents"]]
    # uploads/<date>/<random>/<name>: unique without asking the store whether the name is free (models.upload_key).
    assert len(keys) == 1 and re.fullmatch(r"uploads/\d{4}/\d{2}/\d{2}/[0-9a-f]{32}/report\.bin", keys[0]), keys
    assert bucket.get_object(Bucket=BUCKET, Key=keys[0])["Body"].read() == content
    assert httpx.get(f"{s3.url}/{BUCKET}/{keys[0]}", timeout=30).status_code == 403  # not public, unlike static/
    assert upload["id"] in [u["id"] for u in client.get("/api/uploads").json()["uploads"]]
    assert httpx.get(f"{app.web.url}{upload['download']}", timeout=30).status_code == 401


def test_uploads_of_one_name_at_once_each_keep_their_own_bytes(app: App) -> None:
    """Eight uploads named alike, sent together: each downloads as what it sent (one key each)."""
    client = signed_in(app.web)
    bodies = [secrets.token_bytes(40_000 + i) for i in range(8)]

    def send(body: bytes) -> dict[str, Any]:
        posted = client.post("/api/uploads", files={"file": ("same.bin", body, "application/octet-stream")},
                             headers={"X-CSRFToken": client.cookies["csrftoken"]})
        assert posted.status_code == 201, posted.text
        return posted.json()  # type: ignore[no-any-return]

    with ThreadPoolExecutor(max_workers=8) as pool:
        stored = list(pool.map(send, bodies))
    for body, upload in zip(bodies, stored, strict=True):
        assert client.get(upload["download"]).content == body, upload


def test_readyz_is_503_while_redis_is_down_and_ready_again_after(app: App, backing: Backing) -> None:
    ready = httpx.get(f"{app.web.url}/readyz", timeout=30)
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"postgresql": "ok", "redis": "ok", "s3": "ok"}
    for _ in range(8):  # connections to Redis in every worker's pool, which the restart breaks
        httpx.get(f"{app.web.url}/readyz", timeout=30)
    backing.stop_redis()
    try:
        down = httpx.get(f"{app.web.url}/readyz", timeout=30)
        assert down.status_code == 503, down.text
        checks = down.json()["checks"]
        assert checks["postgresql"] == "ok" and checks["s3"] == "ok" and checks["redis"].startswith("failed")
        assert httpx.get(f"{app.web.url}/healthz", timeout=30).status_code == 200
    finally:
        backing.start_redis()
    assert httpx.get(f"{app.web.url}/readyz", timeout=30).status_code == 200  # no restart of the web
    # The sessions went with that Redis (it keeps nothing on disk here); a new one works in every worker.
    client = signed_in(app.web)
    assert [client.get("/api/me").status_code for _ in range(8)] == [200] * 8


def test_a_redis_that_does_not_answer_fails_the_request_but_signs_nobody_out(app: App, backing: Backing) -> None:
    """Redis paused (every command waits, past the web's 2 s socket timeout and its retries; its data stays): a signed-in
    request, and a sign-in, answer 503 with Retry-After, JSON under /api/ and a page elsewhere, and does not touch the
    session cookie; once Redis answers, the same browser is still signed in. (Django's own cache sessions
    read the error as "no session", answered 401 and deleted the cookie: signed out for good.)"""
    client = signed_in(app.web)
    assert client.get("/api/me").json() == {"username": USER}
    newcomer = httpx.Client(base_url=app.web.url, timeout=30)
    newcomer.get("/accounts/login/").raise_for_status()  # no session yet: only the CSRF cookie
    sign_in = {"username": USER, "password": PASSWORD, "csrfmiddlewaretoken": newcomer.cookies["csrftoken"]}
    assert backing.redis_cli("client", "pause", "60000", "all") == "OK"
    try:
        paused = time.monotonic()
        api, page = client.get("/api/me"), client.get("/uploads/")
        # Signing in creates a session: Django let that Redis error through, a 500.
        refused = newcomer.post("/accounts/login/", data=sign_in)
        print(f"three requests while Redis was paused: {time.monotonic() - paused:.1f} s")
    finally:
        assert backing.redis_cli("client", "unpause") == "OK"
    assert (api.status_code, api.headers.get("retry-after"), api.json()) == (
        503, "5", {"error": "your session is unavailable for a moment; try again"}), api.text
    assert page.status_code == 503 and 'id="sessions-unavailable"' in page.text, page.text[:500]
    assert "sessionid" not in api.headers.get("set-cookie", "") + page.headers.get("set-cookie", "")
    assert client.get("/api/me").json() == {"username": USER}
    assert (refused.status_code, refused.headers.get("retry-after")) == (503, "5"), refused.text[:500]
    assert 'id="sessions-unavailable"' in refused.text and "sessionid" not in refused.headers.get("set-cookie", "")
    signed = newcomer.post("/accounts/login/", data=sign_in)
    assert signed.status_code == 302 and newcomer.get("/api/me").json() == {"username": USER}


class Gate:
    """A TCP relay on 127.0.0.1 to another port (here moto's S3), which the test shuts (connections are
    refused, as to a store that is restarting) and opens again on the same port."""

    def __init__(self, target: int) -> None:
        self.target, self.port = target, 0
        self._listener: socket.socket | None = None
        self._open: list[socket.socket] = []
        self.open()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def open(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port, self._listener = listener.getsockname()[1], listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def shut(self) -> None:
        assert self._listener is not None
        self._listener.close()
        for connection in self._open:
            connection.close()
        self._open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self._open += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def test_an_object_store_that_does_not_answer_fails_uploads_with_503_and_loses_none(fleet: Fleet,
                                                                                   s3: MotoEndpoint) -> None:
    """S3 refusing connections (as a store that restarts): an upload answers 503 with Retry-After, and so does
    a download, instead of a 500; the upload is not recorded; once S3 answers, the same browser uploads it
    again, and every acknowledged upload comes back byte for byte."""
    gate = Gate(int(s3.url.rsplit(":", 1)[1]))
    web = fleet.start("store", web_port(3), S3_ENDPOINT_URL=gate.url)
    try:
        client = signed_in(web)
        bodies = [secrets.token_bytes(5000), secrets.token_bytes(7000)]

        def upload(body: bytes) -> httpx.Response:
            return client.post("/api/uploads", files={"file": ("gate.bin", body, "application/octet-stream")},
                               headers={"X-CSRFToken": client.cookies["csrftoken"]})

        first = upload(bodies[0])
        assert first.status_code == 201, first.text
        gate.shut()
        refused, download = upload(bodies[1]), client.get(first.json()["download"])
        for answer in (refused, download):
            assert (answer.status_code, answer.headers.get("retry-after"), answer.json()) == (
                503, "5", {"error": "the file store is unavailable for a moment; try again"}), answer.text[:300]
        page = client.get("/uploads/")
        assert page.status_code == 200 and "gate.bin" in page.text  # the list is the database's
        gate.open()
        second = upload(bodies[1])
        assert second.status_code == 201, second.text
        listed = [u["id"] for u in client.get("/api/uploads").json()["uploads"] if u["name"] == "gate.bin"]
        assert sorted(listed) == sorted([first.json()["id"], second.json()["id"]])
        for answer, body in ((first, bodies[0]), (second, bodies[1])):
            assert client.get(answer.json()["download"]).content == body
    finally:
        gate.shut()
        web.remove()


def test_the_parcel_page_shows_the_history_or_a_clear_error_when_tracking_is_down(
        app: App, fleet: Fleet, tracking: Tracking) -> None:
    shown = httpx.get(f"{app.web.url}/parcels/FD-1001", timeout=30)
    assert shown.status_code == 200 and "out for delivery" in shown.text and "Paris" in shown.text, app.web.logs()[-4000:]
    assert "2026-12-02T07:30:00Z" in shown.text, app.web.logs()[-4000:]
    assert httpx.get(f"{app.web.url}/parcels/FD-0000", timeout=30).status_code == 404

    tracking.hold = threading.Event()  # answers nothing: the web's TRACKING_TIMEOUT (2 s) runs out
    try:
        slow = httpx.get(f"{app.web.url}/parcels/FD-1001", timeout=30)
    finally:
        tracking.hold.set()
        tracking.hold = None
    assert slow.status_code == 503 and 'id="tracking-unavailable"' in slow.text

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    down = fleet.start("down", web_port(2), TRACKING_URL=f"http://127.0.0.1:{closed}")
    try:
        page = httpx.get(f"{down.url}/parcels/FD-1001", timeout=30)
        assert page.status_code == 503
        assert "Parcel tracking is unavailable right now" in page.text
        assert httpx.get(f"{down.url}/", timeout=30).status_code == 200  # the rest of the site works
        assert signed_in(down).get("/api/me").json() == {"username": USER}
    finally:
        down.remove()


def test_sigterm_lets_the_request_in_flight_finish(app: App, fleet: Fleet, tracking: Tracking) -> None:
    web = fleet.start("term", web_port(2), TRACKING_TIMEOUT="120", WEB_PROCESSES="2")
    answers: list[httpx.Response | Exception] = []

    def request() -> None:
        try:
            answers.append(httpx.get(f"{web.url}/parcels/FD-1001", timeout=120))
        except httpx.HTTPError as error:
            answers.append(error)

    tracking.hold, tracking.arrived = threading.Event(), threading.Event()
    client = threading.Thread(target=request)
    try:
        client.start()
        assert tracking.arrived.wait(60), "the parcel request never reached the tracking service"
        docker("kill", "--signal", "TERM", web.name)

        def signalled() -> bool:
            """The idle worker has gone (of the master and two workers), or the whole container has."""
            top = docker("top", web.name, check=False)
            return top.returncode != 0 or len(top.stdout.strip().splitlines()) - 1 < 3

        wait_until("uWSGI to act on SIGTERM", signalled, timeout=60)
        tracking.hold.set()
        client.join(120)
    finally:
        tracking.hold.set()
        tracking.hold = None
    answer = answers[0]
    assert isinstance(answer, httpx.Response), f"the request in flight failed: {answer!r}\n{web.logs()[-3000:]}"
    assert answer.status_code == 200 and "out for delivery" in answer.text
    exit_code = docker("wait", web.name, timeout=120).stdout.strip()
    assert exit_code == "0", web.logs()[-3000:]


def test_a_configuration_error_is_one_line_that_names_the_variable_not_the_secret(fleet: Fleet) -> None:
    canary = f"url-canary-{secrets.token_hex(6)}"
    done = fleet.task("manage.py", "check", DJANGO_SECRET_KEY="",
                      DATABASE_URL=f"postgresql://web:{canary}@127.0.0.1/web")
    assert done.returncode == 78, done.stdout + done.stderr
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    message = json.loads(lines[0])["msg"]
    assert "DJANGO_SECRET_KEY is required" in message and "DATABASE_PASSWORD holds it" in message
    assert canary not in lines[0]


def test_every_log_line_is_json_and_carries_no_secret(app: App, fleet: Fleet) -> None:
    """Last in the module: every container it started has logged by now. stdout is JSON lines only;
    stderr has only what uWSGI prints before its logging starts."""
    signed_in(app.web).get("/uploads/")
    for web in fleet.started:
        stdout, stderr = web.streams()
        assert stdout, web.name
        for line in stdout.splitlines():
            entry = json.loads(line)
            assert isinstance(entry, dict) and "msg" in entry, line
        for line in stderr.splitlines():
            assert line.startswith(("[uWSGI] getting INI configuration", "[log-encoder] registered")), line
        for canary in CANARIES:
            assert canary not in stdout + stderr, f"a secret is in {web.name}'s logs"
    requests = [json.loads(line) for line in app.web.streams()[0].splitlines() if '"fdweb.request"' in line]
    assert any(r.get("path") == "/uploads/" and r.get("status") == 200 and r.get("user_id") for r in requests)
