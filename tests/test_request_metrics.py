"""The exporters role's mtail program, which turns nginx's access log into per-service request metrics.

roles/exporters/files/fleetdeploy_requests.mtail runs in Debian's mtail (from PATH, else unpacked from its
.deb into .cache/prometheus-tools like promtool) over lines built from the nginx role's own log format,
the `log_format fleetdeploy_json` of roles/nginx/templates/nginx.conf.j2: once over a whole file
(--one_shot), and once as the app hosts run it, a server following the log through logrotate's rotation.
mtail listens only on 127.0.0.1, on a free port.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from helpers import REPO, debian_tool, free_port

PROGRAM = REPO / "roles" / "exporters" / "files" / "fleetdeploy_requests.mtail"
METRIC = "fleetdeploy_http_request_duration_seconds"
# The buckets docs/monitoring.md lists (and the canary analysis's test assumes).
BUCKETS = ["0.005", "0.01", "0.025", "0.05", "0.075", "0.1", "0.15", "0.2", "0.3", "0.4", "0.5", "0.75",
           "1", "1.5", "2", "3", "5", "10", "+Inf"]
SERIES = re.compile(r'^(\w+)\{(.*)\} (\S+)$')


def log_format() -> str:
    """The format string nginx fills in: the quoted pieces of the nginx role's log_format directive, joined."""
    template = (REPO / "roles" / "nginx" / "templates" / "nginx.conf.j2").read_text()
    directive = re.search(r"log_format fleetdeploy_json escape=json ([^;]*);", template)
    assert directive, "roles/nginx/templates/nginx.conf.j2 has no log_format fleetdeploy_json"
    return "".join(re.findall(r"'([^']*)'", directive[1]))


LOG_FORMAT = log_format()


def access_line(service: str, status: int, seconds: str, request: str = "GET / HTTP/1.1") -> str:
    """One line as nginx writes it with escape=json: every variable's value escaped as in a JSON string."""
    values = {"time_iso8601": "2026-12-01T10:00:00+00:00", "fd_service": service, "fd_request_id": "req-1",
              "remote_addr": "10.0.0.2", "host": "app1", "request": request, "status": str(status),
              "body_bytes_sent": "6", "request_time": seconds, "upstream_addr": "127.0.0.1:8001",
              "upstream_status": str(status), "upstream_connect_time": "0.000", "upstream_response_time": seconds,
              "fd_forwarded_proto": "http", "http_user_agent": 'curl/7.88.1 "quoted"'}
    # A variable this table does not know (a field added to the format) gets a word; where the format
    # writes it unquoted, as a number, json.loads below fails until the table learns it.
    line = re.sub(r"\$(\w+)", lambda m: json.dumps(values.get(m[1], "unknown"))[1:-1], LOG_FORMAT)
    assert json.loads(line)["request_time"] == float(seconds), line
    return line


def parse(exposition: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """The samples of the Prometheus text format, by metric name, each with its labels."""
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in exposition.splitlines():
        found = SERIES.match(line)
        if found:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', found[2]))
            samples.setdefault(found[1], []).append((labels, float(found[3])))
    return samples


def by_service_and_status(samples: dict[str, list[tuple[dict[str, str], float]]], suffix: str,
                          le: str | None = None) -> dict[tuple[str, str], float]:
    return {(labels["service"], labels["status"]): value for labels, value in samples.get(f"{METRIC}_{suffix}", [])
            if le is None or labels.get("le") == le}


@pytest.fixture(scope="module")
def mtail() -> Path:
    return debian_tool("mtail")


@pytest.fixture
def progs(tmp_path: Path) -> Path:
    """A folder holding the role's program alone, as /etc/mtail on a host (mtail loads every *.mtail)."""
    folder = tmp_path / "progs"
    folder.mkdir()
    shutil.copy(PROGRAM, folder / PROGRAM.name)
    return folder


def test_the_program_counts_each_request_by_service_and_status_in_its_bucket(mtail: Path, progs: Path,
                                                                              tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_text("\n".join([
        access_line("web", 200, "0.012"),
        access_line("web", 200, "0.120"),
        "not a line of nginx's",
        access_line("web", 503, "0.004"),
        # A request no service's location answered: nginx leaves the service empty.
        access_line("", 404, "0.001"),
        access_line("web", 200, "0.120")[:60],
        "",
        # A request line that tries to pass for other fields is a JSON string with its quotes escaped.
        access_line("api", 200, "1.500", request='GET /?","status":999,"request_time":99.0,"x":" HTTP/1.1'),
        access_line("api", 404, "7.000"),
    ]) + "\n")
    result = subprocess.run([str(mtail), "--progs", str(progs), "--logs", str(log), "--one_shot",
                             "--one_shot_format", "prometheus", "--logtostderr", "--address", "127.0.0.1", "--port", "0"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    samples = parse(result.stdout)

    assert by_service_and_status(samples, "count") == {("web", "200"): 2, ("web", "503"): 1, ("api", "200"): 1,
                                                       ("api", "404"): 1}
    assert by_service_and_status(samples, "sum") == pytest.approx({("web", "200"): 0.132, ("web", "503"): 0.004,
                                                                   ("api", "200"): 1.5, ("api", "404"): 7.0})
    assert {labels["le"] for labels, _ in samples[f"{METRIC}_bucket"]} == set(BUCKETS)
    # 0.012 s and 0.120 s: one in le=0.025, both in le=0.15, only the first in le=0.1; a bound is inclusive.
    buckets = {le: by_service_and_status(samples, "bucket", le) for le in BUCKETS}
    assert [buckets[le][("web", "200")] for le in BUCKETS] == [0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2]
    assert [buckets[le][("api", "200")] for le in BUCKETS] == [0] * 13 + [1] * 6
    assert [buckets[le][("api", "404")] for le in BUCKETS] == [0] * 17 + [1, 1]
    assert [buckets[le][("web", "503")] for le in BUCKETS] == [1] * 19
    # Every series of the histogram has the same labels: service, status, and mtail's prog.
    for suffix in ("bucket", "sum", "count"):
        for labels, _ in samples[f"{METRIC}_{suffix}"]:
            assert set(labels) - {"le"} == {"prog", "service", "status"}, labels
            assert labels["prog"] == PROGRAM.name and labels["service"], labels


@pytest.fixture
def server(mtail: Path, progs: Path, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """mtail as the role runs it (its flags from roles/exporters/templates/mtail.default.j2), on the loopback."""
    log = tmp_path / "access.log"
    # Already in the log when mtail starts: a restarted mtail starts at the end and counts it no second time.
    log.write_text(access_line("web", 200, "0.010") + "\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    process = subprocess.Popen([str(mtail), "--progs", str(progs), "--logtostderr", "--address", "127.0.0.1",
                                "--port", str(port), "--logs", str(log)],
                               stdout=subprocess.DEVNULL, stderr=(tmp_path / "mtail.log").open("w"))
    try:
        wait_for(url, lambda text: f'mtail_prog_loads_total{{prog="{PROGRAM.name}"}} 1' in text)
        yield url, log
    finally:
        process.terminate()
        process.wait(timeout=20)


def scrape(url: str) -> str:
    """mtail's /metrics, or nothing while it does not answer yet."""
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            body: bytes = answer.read()
            return body.decode()
    except OSError:
        return ""


def wait_for(url: str, ready: Callable[[str], bool], timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = scrape(url)
        if ready(text):
            return text
        if time.monotonic() > deadline:
            pytest.fail(f"mtail at {url} did not get there in {timeout} s; it said:\n{text[-3000:]}")
        time.sleep(0.2)


def counts(url: str) -> dict[tuple[str, str], float]:
    return by_service_and_status(parse(scrape(url)), "count")


def test_the_server_follows_the_log_through_logrotate(server: tuple[str, Path]) -> None:
    """Debian's /etc/logrotate.d/nginx renames the log and creates the next one (create 0640 www-data adm); nginx
    writes to the renamed file until its reopen signal, then to the new one. mtail counts both."""
    url, log = server
    with log.open("a") as out:
        out.write(access_line("web", 200, "0.020") + "\n" + access_line("web", 500, "0.030") + "\n")
    wait_for(url, lambda text: by_service_and_status(parse(text), "count") == {("web", "200"): 1, ("web", "500"): 1})

    rotated = log.with_name("access.log.1")
    log.rename(rotated)
    log.touch()
    with rotated.open("a") as out:
        out.write(access_line("web", 200, "0.020") + "\n")
    with log.open("a") as out:
        out.write(access_line("web", 200, "0.020") + "\n" + access_line("api", 200, "0.020") + "\n")
    wait_for(url, lambda text: by_service_and_status(parse(text), "count")
             == {("web", "200"): 3, ("web", "500"): 1, ("api", "200"): 1})

    # Nothing more arrives later: each line was counted once.
    time.sleep(1)
    assert counts(url) == {("web", "200"): 3, ("web", "500"): 1, ("api", "200"): 1}
