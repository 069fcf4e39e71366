"""The real application on a lab of its own, as `make lab` brings it up: web (Django under uWSGI), tracking
(its API and its worker) and postcode, on three app hosts, with PostgreSQL, Redis and the S3 store on the
data host, under traffic that mixes pages, the API, search and tracking, GETs and POSTs, signed in, with
uploads (tests/app_traffic.py). All traffic goes to 127.0.0.1 or into the lab's own containers.

The lab (lab_name fdapp, LB on 127.0.0.1:26080) has no monitor host. It starts with two app hosts; the
third joins under traffic, as a host the fleet gains does. Release v1 is the services as they are in this
checkout; v2 is the same sources plus a tracking migration that adds a column to the table
the traffic writes (the expand step of docs/deploy.md), built by the production build playbook from a copy
of services/ (build_allow_dirty: the copy is not a git tree).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from app_traffic import PARCEL, AppTraffic, Traffic, sign_in
from helpers import REPO, SLOT_SUFFIX, Run, container_events, link_group_vars, playbook, slot_port

pytestmark = [pytest.mark.lab, pytest.mark.slow]

LAB = f"fdapp{SLOT_SUFFIX}"
HTTP_PORT = slot_port(26080)
RATE = 60  # requests per second (the issue asks for at least 50) over CONNECTIONS keep-alive connections:
# each one waits for its answer, so on a loaded machine 4 reached only 43/s (CI, a deploy of 740 s).
CONNECTIONS = 8
MIGRATION = "0002_tracking_events_source.sql"
V2_DROPS = "tracking/README.md"  # in v1's sources, not in v2's
QUIET_PARCEL = "LAB0000002"  # no traffic writes to it: its answer must not change across a deploy


class AppLab:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.inventory = root / "inventory"
        self.client = docker.from_env()

    def lab_vars(self, app_hosts: int) -> dict[str, object]:
        return {
            "lab_name": LAB,
            "lab_app_hosts": app_hosts,
            "lab_monitor_host": False,
            "lab_data_host": True,
            "lab_ssh_port_base": slot_port(2500),
            "lab_http_port": HTTP_PORT,
            "lab_https_port": slot_port(26443),
            "lab_registry_port": slot_port(26543),
            "lab_state_dir": str(self.root / "state"),
            "lab_inventory_file": str(self.inventory / "hosts.yml"),
        }

    def play(self, path: str, *args: str, **extra_vars: object) -> Run:
        return playbook(path, "-i", str(self.inventory), *args, extra_vars=extra_vars or None,
                        FLEETDEPLOY_ACTOR="pytest", ANSIBLE_CACHE_PLUGIN_CONNECTION=str(self.root / "facts"))

    def exec(self, host: str, *cmd: str) -> str:
        return self.client.containers.get(f"{LAB}-lab-{host}").exec_run(list(cmd)).output.decode()

    def record(self, host: str, service: str) -> dict[str, Any]:
        """The host's release record of the service (roles/app_release), as test_deploy's Lab reads it."""
        return json.loads(self.exec(host, "cat", f"/var/lib/fleetdeploy/releases/{service}.json"))

    def app_hosts(self) -> list[str]:
        found = self.client.containers.list(filters={"label": f"org.fleetdeploy.lab={LAB}"})
        return sorted(c.labels["org.fleetdeploy.host"] for c in found if c.labels["org.fleetdeploy.host"].startswith("app"))

    def password(self) -> str:
        return (self.root / "state" / "secrets" / "web_demo_password").read_text().strip()

    def on_host(self, host: str, path: str, cookie: str = "") -> tuple[int, bytes]:
        """GET path from the host's own nginx (the load balancer left out): status and body. Status 0 when
        no answer came (curl or the exec itself failed: once, under load, the exec gave no output at all);
        the body is then what was printed instead. The body is read back until it has the length curl
        downloaded (up to three times): under a loaded suite, Docker's exec once handed back other bytes."""
        container = self.client.containers.get(f"{LAB}-lab-{host}")
        out = container.exec_run(
            ["curl", "-sS", "--max-time", "10", "-o", "/tmp/fd-body", "-w", "%{http_code} %{size_download}",
             *(["-H", f"Cookie: {cookie}"] if cookie else []), f"http://127.0.0.1{path}"]).output.decode()
        answer = re.search(r"([1-5][0-9][0-9]) ([0-9]+)$", out)
        if not answer:
            return 0, out.encode()
        for _ in range(3):
            body = container.exec_run(["cat", "/tmp/fd-body"]).output
            if len(body) == int(answer[2]):
                break
            time.sleep(1)
        return int(answer[1]), body

    def slow_requests(self, since: float, slower_than_ms: float = 2000) -> list[str]:
        """The requests the services of every app host logged since `since` (epoch seconds) that took longer
        than `slower_than_ms`, or failed, from the hosts' journals (the containers' logs outlive them): the
        evidence a failure of the traffic is reported with, since the lab is gone afterwards."""
        found = []
        for host in self.app_hosts():
            lines = self.exec(host, "journalctl", "-q", "-o", "json", "--since", f"@{int(since)}",
                              "--output-fields", "MESSAGE,CONTAINER_NAME").splitlines()
            for line in lines:
                try:
                    entry = json.loads(line)
                    message = json.loads(entry.get("MESSAGE") or "")
                except (ValueError, TypeError):
                    continue
                if isinstance(message, dict) and "duration_ms" in message and (
                        message["duration_ms"] > slower_than_ms or int(message.get("status", 200)) >= 500):
                    found.append(f"{host} {entry.get('CONTAINER_NAME', '?')} {json.dumps(message)[:400]}")
        return found

    def psql(self, database: str, sql: str) -> str:
        return self.exec("data1", "runuser", "-u", "postgres", "--", "psql", "-d", database, "-At", "-c", sql)


def build_v2(root: Path) -> Path:
    """services/ copied, with a tracking migration that adds a nullable column to tracking_events, and
    without tracking's README.md (V2_DROPS): the v2 build context must not keep it from v1's."""
    sources = root / "v2-services"
    shutil.copytree(REPO / "services", sources, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
    (sources / V2_DROPS).unlink()
    (sources / "tracking" / "tracking" / "migrations" / MIGRATION).write_text(
        "-- v2 of the application's test: an expansion (a nullable column) while v1 keeps writing events.\n"
        "ALTER TABLE tracking_events ADD COLUMN source text;\n")
    return sources


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("applab")
    lab = AppLab(root)
    lab.inventory.mkdir()
    # The local environment's group_vars as they are (a developer's own vault.yml left out): the application.
    link_group_vars(lab.inventory)
    playbook("playbooks/lab_destroy.yml", extra_vars=lab.lab_vars(1)).check()
    playbook("playbooks/lab.yml", extra_vars=lab.lab_vars(2)).check()
    lab.play("site.yml").check()
    lab.play("playbooks/build.yml", release="v1", build_allow_dirty=True).check()
    lab.play("playbooks/build.yml", release="v2", build_allow_dirty=True,
             image_build_source_dir=str(build_v2(root))).check()
    lab.play("deploy.yml", release="v1").check()
    lab.play("playbooks/lab_seed.yml").check()
    yield lab
    playbook("playbooks/lab_destroy.yml", extra_vars=lab.lab_vars(3))
    shutil.rmtree(root, ignore_errors=True)


def assert_no_failures(traffic: Traffic, lab: AppLab | None = None, since: float = 0.0) -> None:
    """With the lab and the start of the traffic, a failure is reported with the slow or failed requests
    the services logged meanwhile."""
    assert traffic.requests >= 100, traffic.summary()
    assert traffic.rate >= 50, traffic.summary()
    if traffic.failures and lab is not None:
        pytest.fail(f"{traffic.summary()}\nrequests the services logged as slow or failed:\n"
                    + "\n".join(lab.slow_requests(since)[:60]))
    assert traffic.failures == [], traffic.summary()


def test_the_lab_seed_changes_nothing_the_second_time(lab: AppLab) -> None:
    """`make lab` may be run again: the demo user keeps its password, no parcel or event is doubled."""
    assert lab.play("playbooks/lab_seed.yml").check().changed() == 0
    assert lab.psql("tracking", f"SELECT count(*) FROM tracking_events e JOIN parcels p ON p.id = e.parcel_id "
                                f"WHERE p.code = '{QUIET_PARCEL}'").strip() == "2"


def test_the_build_context_of_a_release_is_its_sources_exactly(lab: AppLab) -> None:
    """The ops host's staged context of tracking, last built for v2, is v2's sources (build_v2's copy): its
    migration in, the file v2 dropped out (staged file by file, v1's stayed), plus shared/ and the CA bundle."""
    staged = lab.exec("ops1", "find", "/var/lib/fleetdeploy/build/tracking", "-type", "f", "-printf", "%P\\n").split()
    sources = lab.root / "v2-services"
    expected = [p.relative_to(sources / "tracking").as_posix() for p in (sources / "tracking").rglob("*") if p.is_file()]
    expected += ["shared/" + p.relative_to(sources / "shared").as_posix() for p in (sources / "shared").rglob("*")
                 if p.is_file()]
    assert f"tracking/migrations/{MIGRATION}" in expected and V2_DROPS.removeprefix("tracking/") not in expected
    assert sorted(staged) == sorted([*expected, "extra-ca.crt"])


def test_every_service_answers_on_its_own_prefix_from_every_host(lab: AppLab) -> None:
    """Each route reaches its own service on each app host: the web's API, the tracking API, the postal-code
    search over the real data set (with a fuzzy place name), and the web's parcel page, which asks tracking."""
    for host in lab.app_hosts():
        status, body = lab.on_host(host, "/api/version")
        assert (status, json.loads(body)["service"]) == (200, "web"), (host, body[:200])
        status, body = lab.on_host(host, f"/tracking/parcels/{QUIET_PARCEL}")
        assert status == 200 and [e["location"] for e in json.loads(body)["events"]] == ["Salzburg", "Wien"], (host, body[:300])
        status, body = lab.on_host(host, "/postcode/search?place=Zurich&country=CH")
        assert status == 200 and any(r["place"].startswith("Zürich") for r in json.loads(body)["results"]), (host, body[:300])
        status, body = lab.on_host(host, f"/parcels/{PARCEL}")
        assert status == 200 and b"Hannover" in body, (host, body[:300])


SERVICES = ("web", "tracking", "tracking-worker", "postcode")


def test_a_new_app_host_runs_every_service_at_the_fleets_release_before_it_takes_traffic(lab: AppLab) -> None:
    """Issue 18's fourth acceptance, by the lab's join path (docs/lab.md, "Growing the lab"): under traffic,
    the lab gains app3, and site.yml limited to it and the hosts that must know it (the load balancer and the
    data host; `--limit`, as join.yml readies an instance in AWS) provisions it, starts every service at
    the release app1 runs, and only then lets it into HAProxy. No request fails; the first request app3's
    nginx passes on comes after its last service was recorded running, and it serves every route."""
    traffic_since = time.time()
    with AppTraffic(HTTP_PORT, "demo", lab.password(), rate=RATE, connections=CONNECTIONS) as traffic:
        time.sleep(3)  # steady state first
        playbook("playbooks/lab.yml", extra_vars=lab.lab_vars(3)).check()
        run = lab.play("site.yml", "--limit", "app3:lb:data")
        time.sleep(5)  # traffic on the grown fleet
    run.check()
    assert_no_failures(traffic, lab, traffic_since)
    assert lab.app_hosts() == ["app1", "app2", "app3"]
    records = {service: lab.record("app3", service) for service in SERVICES}
    assert {service: record["current"] for service, record in records.items()} == dict.fromkeys(SERVICES, "v1"), records
    # A record's history is newest first.
    ready = max(datetime.fromisoformat(record["history"][0]["time"].removesuffix("Z") + "+00:00")
                for record in records.values())
    log = [json.loads(line) for line in lab.exec("app3", "cat", "/var/log/nginx/access.log").splitlines() if line]
    # What the load balancer passed on: neither a request made on the host itself nor the web's own calls to
    # tracking through this nginx (Host host.docker.internal).
    proxied = [entry for entry in log if entry["remote_addr"] != "127.0.0.1" and entry["host"] != "host.docker.internal"]
    assert proxied, "app3 took no traffic"
    # The log's time has whole seconds.
    assert datetime.fromisoformat(proxied[0]["time"]) >= ready.replace(microsecond=0), (ready, proxied[0])
    assert {entry["service"] for entry in proxied} >= {"web", "tracking", "postcode"}, proxied[-20:]
    assert [entry for entry in proxied if entry["status"] >= 500] == []


def test_v1_to_v2_of_every_service_on_three_hosts_keeps_sessions_uploads_and_answers(lab: AppLab) -> None:
    """Issue 18's first acceptance and issue 17's first and fourth: v1 -> v2 of web, tracking (API and
    worker) and postcode on three app hosts, with a migration adding a column to the table the traffic
    writes, at 60 requests/s: no failed request; a user signed in before is still signed in on every host;
    a file uploaded before downloads byte for byte from every host; search and tracking answer the same;
    on every host the new worker started before the old one got SIGTERM, and the old one exited 0."""
    before_session = httpx.Client(base_url=f"http://127.0.0.1:{HTTP_PORT}", timeout=10)
    sign_in(before_session, "demo", lab.password())
    body = bytes(range(256)) * 400
    uploaded = before_session.post("/api/uploads", files={"file": ("before.bin", body, "application/octet-stream")},
                                   headers={"X-CSRFToken": before_session.cookies["csrftoken"]})
    assert uploaded.status_code == 201, uploaded.text[:300]
    download = uploaded.json()["download"]
    cookie = f"sessionid={before_session.cookies['sessionid']}"
    search = before_session.get("/postcode/search", params={"code": "80"}).json()
    parcel = before_session.get(f"/tracking/parcels/{QUIET_PARCEL}").json()

    traffic_since = time.time()
    with (container_events(lab.exec, lab.app_hosts()) as events,
          AppTraffic(HTTP_PORT, "demo", lab.password(), rate=RATE, connections=CONNECTIONS) as traffic):
        time.sleep(3)  # steady state first
        run = lab.play("deploy.yml", release="v2")
        time.sleep(2)
    run.check()
    assert_no_failures(traffic, lab, traffic_since)
    (lab.root / "deploy-traffic.json").write_text(json.dumps(traffic.percentiles()))

    assert lab.psql("tracking", "SELECT column_name FROM information_schema.columns "
                                "WHERE table_name = 'tracking_events' AND column_name = 'source'").strip() == "source"
    for host in lab.app_hosts():
        for service in SERVICES:
            record = lab.record(host, service)
            assert record["current"] == "v2", (host, service, record)
        status, me = lab.on_host(host, "/api/me", cookie)
        assert (status, json.loads(me)) == (200, {"username": "demo"}), (host, me[:200])
        status, content = lab.on_host(host, download, cookie)
        assert status == 200 and hashlib.sha256(content).hexdigest() == hashlib.sha256(body).hexdigest(), (host, status)
        worker = events.get((host, "tracking-worker"), [])
        # On a failure, the workers' own last words: why one died or started again.
        assert [(action, name) for action, name, _ in worker] == [
            ("start", "tracking-worker-b"), ("kill", "tracking-worker-a"), ("die", "tracking-worker-a")], (
            host, worker, lab.exec(host, "journalctl", "-q", "-o", "cat", "-n", "30", f"--since=@{int(traffic_since) - 60}",
                                   "CONTAINER_NAME=tracking-worker-a", "+", "CONTAINER_NAME=tracking-worker-b"))
        assert worker[-1][2] == "0", (host, worker)  # a clean exit on SIGTERM, not a SIGKILL (137)
    # Every upload the traffic made during the deploy is there too, byte for byte (by its stored sha256).
    for path, digest in list(traffic.uploads.items())[:20]:
        status, content = lab.on_host(lab.app_hosts()[-1], path, cookie)
        assert status == 200 and hashlib.sha256(content).hexdigest() == digest, path
    assert before_session.get("/postcode/search", params={"code": "80"}).json() == search
    assert before_session.get(f"/tracking/parcels/{QUIET_PARCEL}").json() == parcel
    before_session.close()


def test_an_event_queued_through_the_api_is_stored_by_the_worker(lab: AppLab) -> None:
    """The worker path: POST /tracking/events answers 202, and a worker stores the event in the parcel's history."""
    with httpx.Client(base_url=f"http://127.0.0.1:{HTTP_PORT}", timeout=10) as client:
        queued = client.post("/tracking/events", json={"parcel_code": "LAB0000003", "status": "in_transit",
                                                       "location": "queued by the test"})
        assert queued.status_code == 202, queued.text[:300]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            events = client.get("/tracking/parcels/LAB0000003").json()["events"]
            if any(e["location"] == "queued by the test" for e in events):
                return
            time.sleep(1)
    pytest.fail(f"the queued event never reached the parcel's history: {events}")


def test_with_tracking_stopped_the_parcel_page_says_so_and_the_rest_of_the_site_works(lab: AppLab) -> None:
    """Issue 18's third acceptance: every tracking container stopped; through the load balancer the parcel
    page answers 503 with a clear message, and the home page, the API and the search keep answering
    (tracking has host_health: false, so no host leaves the load balancer)."""
    hosts = lab.app_hosts()
    stopped = {host: lab.exec(host, "sh", "-c", "docker ps -q --filter label=org.fleetdeploy.service=tracking").split()
               for host in hosts}
    try:
        for host, ids in stopped.items():
            lab.exec(host, "docker", "stop", *ids)
        time.sleep(4)  # HAProxy's checks (1 s apart, 2 to fall) have had their say
        states = lab.exec("lb1", "sh", "-c", "echo 'show servers state' | socat stdio /run/haproxy/admin.sock")
        up = [fields[3] for fields in map(str.split, states.splitlines()[2:]) if fields[1:2] == ["app"] and fields[5] == "2"]
        assert sorted(up) == hosts, states  # srv_op_state 2: running; no host left the load balancer
        with httpx.Client(base_url=f"http://127.0.0.1:{HTTP_PORT}", timeout=15) as client:
            sign_in(client, "demo", lab.password())
            for _ in range(2 * len(hosts)):  # every host answers some of them
                page = client.get(f"/parcels/{PARCEL}")
                assert page.status_code == 503 and "tracking" in page.text.lower(), (page.status_code, page.text[:300])
                assert client.get("/").status_code == 200
                assert client.get("/api/me").status_code == 200
                assert client.get("/postcode/search", params={"code": "1010"}).status_code == 200
    finally:
        for host, ids in stopped.items():
            lab.exec(host, "docker", "start", *ids)
    deadline = time.monotonic() + 60
    while (answer := lab.on_host(hosts[0], f"/parcels/{PARCEL}"))[0] != 200 and time.monotonic() < deadline:
        time.sleep(1)
    assert answer[0] == 200, answer[1][:300]


def test_the_pages_load_their_static_files_from_the_public_bucket_while_uploads_stay_private(lab: AppLab) -> None:
    """The stylesheet a page links (collected at release time under a hashed name) loads in a browser on this
    machine, straight from the data host's static bucket as CloudFront serves it in AWS, cached for good;
    nobody unsigned may list either bucket or read an upload (the deploy test's, hence this test's place)."""
    page = httpx.get(f"http://127.0.0.1:{HTTP_PORT}/", timeout=10)
    link = re.search(r'<link rel="stylesheet" href="(http://[^"]+/static/static/fdweb/site\.[0-9a-f]{12}\.css)"', page.text)
    assert page.status_code == 200 and link, page.text[:500]
    css = httpx.get(link.group(1), timeout=10)
    assert css.status_code == 200, (link.group(1), css.status_code)
    assert css.headers["content-type"].startswith("text/css"), css.headers
    assert "immutable" in css.headers.get("cache-control", ""), css.headers
    store = link.group(1).split("/static/static/")[0]
    upload = lab.psql("web", "SELECT file FROM fdweb_upload ORDER BY id LIMIT 1").strip()
    assert upload, "no upload recorded: the deploy test above uploads files"
    refused = {f"{store}/static?list-type=2", f"{store}/uploads?list-type=2", f"{store}/uploads/uploads/{upload}"}
    assert {url: httpx.get(url, timeout=10).status_code for url in refused} == dict.fromkeys(refused, 403)


def test_restarting_redis_and_the_object_store_under_traffic_loses_no_acknowledged_upload(lab: AppLab) -> None:
    """Issue 18's second acceptance. Under the traffic (uploads among it), Redis and then the object store
    restart on the data host (the lab keeps both there, beside PostgreSQL: each server restarts, not the
    host). Every upload the web acknowledged (201) downloads byte for byte afterwards; a user signed in
    before is still signed in; the services come back without a restart of their own (the same containers,
    each host's /readyz 200 again), and from then on no request fails. The requests that failed meanwhile
    are counted: each restart may fail some (docs/application.md says what users see), never more than
    the share of requests sent while its server was down and until every host was ready again."""
    hosts = lab.app_hosts()
    containers = {host: lab.exec(host, "docker", "ps", "-q", "--no-trunc") for host in hosts}
    before_session = httpx.Client(base_url=f"http://127.0.0.1:{HTTP_PORT}", timeout=10)
    sign_in(before_session, "demo", lab.password())
    cookie = f"sessionid={before_session.cookies['sessionid']}"
    time.sleep(2)  # Redis appends to its AOF every second: the session is on disk before the restart
    outages: dict[str, dict[str, Any]] = {}
    traffic_since = time.time()
    with AppTraffic(HTTP_PORT, "demo", lab.password(), rate=RATE, connections=CONNECTIONS) as traffic:
        time.sleep(5)
        for unit in ("redis-server", "seaweedfs"):
            failures, requests, started = len(traffic.failures), traffic.requests, time.monotonic()
            lab.exec("data1", "systemctl", "restart", unit)
            # systemctl returns once the unit has started; the window ends when every host's web finds
            # PostgreSQL, Redis and S3 answering (/readyz).
            while any(lab.on_host(host, "/readyz")[0] != 200 for host in hosts):
                assert time.monotonic() - started < 120, f"the services did not come back after {unit} restarted"
                time.sleep(0.5)
            outages[unit] = {"failed": len(traffic.failures) - failures, "requests": traffic.requests - requests,
                             "seconds_until_ready": round(time.monotonic() - started, 1),
                             "kinds": Traffic(failures=traffic.failures[failures:]).failure_kinds()}
            time.sleep(5)
        time.sleep(10)
    print("restarts under traffic:", json.dumps(outages), traffic.summary())
    (lab.root / "restart-traffic.json").write_text(json.dumps({"outages": outages, **traffic.summary()}))
    assert traffic.rate >= 50, traffic.summary()
    # Failures only while a server was down or some host's web not ready again: none between the restarts
    # or after them.
    assert len(traffic.failures) == sum(o["failed"] for o in outages.values()), (
        traffic.summary(), outages, traffic.failures[-10:], lab.slow_requests(traffic_since)[:40])
    assert {host: lab.exec(host, "docker", "ps", "-q", "--no-trunc") for host in hosts} == containers
    assert traffic.uploads, "the traffic acknowledged no upload"
    for path, digest in traffic.uploads.items():
        fetched = before_session.get(path)
        assert fetched.status_code == 200 and hashlib.sha256(fetched.content).hexdigest() == digest, (path, fetched.status_code)
    status, me = lab.on_host(hosts[0], "/api/me", cookie)
    assert (status, json.loads(me or b"null")) == (200, {"username": "demo"}), me[:200]
    before_session.close()
