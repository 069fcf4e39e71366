"""The canary analysis (library/fleetdeploy_canary_analysis.py with the checks of monitoring/canary.yml)
against a real Prometheus: ten minutes of the request histograms the app hosts export, written for a set
of made-up hosts with promtool's backfill and served by Debian's prometheus binary; each test compares one
canary host with two baseline hosts at the end of that history.

The hosts: base1 and base2 are the baseline (web 20 requests/s, search 5/s, p99 about 100 ms); good1
answers like them; errors1 answers 5 % of web's requests with 500; slow1 takes 300 ms longer on every
request; quiet1 had no search request; broken1 answered web only with 503; newer1 also runs a service
the baseline does not have (labels), which answered only 503.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import REPO, VENV_BIN, debian_tool, env, free_port
from test_release_record import load

analysis = load("fleetdeploy_canary_analysis", REPO / "library" / "fleetdeploy_canary_analysis.py")

CHECKS = yaml.safe_load((REPO / "monitoring" / "canary.yml").read_text())
# The thresholds a deploy is to pass by default.
THRESHOLDS = {"min_success_ratio": 0.99, "max_p99_seconds": 2.0, "max_p99_ratio": 1.5,
              "p99_ratio_floor_seconds": 0.05, "min_requests": 10}
METRIC = "fleetdeploy_http_request_duration_seconds"
BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10]
# Every second, per 100 requests: how many took how long (the baseline's p99 is at 100 ms).
PROFILE = {0.02: 60, 0.04: 30, 0.08: 9, 0.14: 1}
SCRAPE, MINUTES = 15, 10
# host -> service -> status -> (requests per second, seconds added to every request)
HOSTS: dict[str, dict[str, dict[str, tuple[float, float]]]] = {
    "base1": {"web": {"200": (20, 0)}, "search": {"200": (5, 0)}},
    "base2": {"web": {"200": (20, 0)}, "search": {"200": (5, 0)}},
    "good1": {"web": {"200": (20, 0)}, "search": {"200": (5, 0)}},
    "errors1": {"web": {"200": (19, 0), "500": (1, 0)}, "search": {"200": (5, 0)}},
    "slow1": {"web": {"200": (20, 0.3)}, "search": {"200": (5, 0.3)}},
    "quiet1": {"web": {"200": (20, 0)}},
    "broken1": {"web": {"503": (20, 0)}, "search": {"200": (5, 0)}},
    "newer1": {"web": {"200": (20, 0)}, "search": {"200": (5, 0)}, "labels": {"503": (2, 0)}},
}
BASELINE = ["base1", "base2"]


def history(end: int) -> str:
    """OpenMetrics text: the histogram's counters of every host, service and status, one sample per scrape."""
    families: dict[str, list[str]] = {"bucket": [], "count": [], "sum": []}
    for host, services in HOSTS.items():
        for service, statuses in services.items():
            for status, (rate, added) in statuses.items():
                labels = f'host="{host}",service="{service}",status="{status}"'
                for tick in range(MINUTES * 60 // SCRAPE + 1):
                    at, seconds = end - MINUTES * 60 + tick * SCRAPE, tick * SCRAPE
                    per_second = {duration + added: rate * share / 100 for duration, share in PROFILE.items()}
                    for le in [*BUCKETS, "+Inf"]:
                        below = sum(n for d, n in per_second.items() if le == "+Inf" or d <= le)  # type: ignore[operator]
                        families["bucket"].append(f'{METRIC}_bucket{{{labels},le="{le}"}} {below * seconds} {at}')
                    families["count"].append(f"{METRIC}_count{{{labels}}} {rate * seconds} {at}")
                    families["sum"].append(
                        f"{METRIC}_sum{{{labels}}} {sum(d * n for d, n in per_second.items()) * seconds} {at}")
    lines = []
    for suffix, samples in families.items():
        lines += [f"# TYPE {METRIC}_{suffix} unknown", *samples]
    return "\n".join([*lines, "# EOF", ""])


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """(URL, the history's end) of a Prometheus serving that history and scraping nothing."""
    root = tmp_path_factory.mktemp("canary-prometheus")
    end = int(time.time()) // 60 * 60 - 3 * 3600  # in the past, as backfilled blocks must be
    (root / "history.om").write_text(history(end))
    backfill = subprocess.run([str(debian_tool("promtool")), "tsdb", "create-blocks-from", "openmetrics",
                               str(root / "history.om"), str(root / "data")], capture_output=True, text=True, check=False)
    assert backfill.returncode == 0, backfill.stderr
    (root / "prometheus.yml").write_text("scrape_configs: []\n")
    port = free_port()
    server = subprocess.Popen([str(debian_tool("promtool").parent / "prometheus"), f"--config.file={root / 'prometheus.yml'}",
                               f"--storage.tsdb.path={root / 'data'}", "--storage.tsdb.retention.time=30d",
                               f"--web.listen-address=127.0.0.1:{port}"],
                              stdout=subprocess.DEVNULL, stderr=(root / "prometheus.log").open("w"))
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    pass
                probe = analysis.Prometheus(url, end, 5)
                if probe.per_service(f'sum by (service) ({METRIC}_count{{host="base1"}})'):
                    break
            except (OSError, analysis.NoAnswer):
                pass
            time.sleep(0.1)
        else:
            pytest.fail(f"Prometheus did not serve the history: {(root / 'prometheus.log').read_text()[-2000:]}")
        yield url, end
    finally:
        server.terminate()
        server.wait(timeout=30)


def judge(prometheus: tuple[str, int], canary: str, baseline: list[str] = BASELINE,
          **thresholds: float) -> tuple[str, list[str], dict[str, Any]]:
    url, end = prometheus
    return analysis.analyse(analysis.Prometheus(url, end, 5), CHECKS, [canary], baseline, 60,  # type: ignore[no-any-return]
                            {**THRESHOLDS, **thresholds})


def test_a_canary_that_answers_like_the_baseline_passes_with_its_numbers(prometheus: tuple[str, int]) -> None:
    verdict, findings, results = judge(prometheus, "good1")
    assert (verdict, findings) == ("pass", [])
    assert sorted(results) == ["search", "web"]
    web = results["web"]
    assert web.requests["canary"] == pytest.approx(20 * 60, rel=0.05), web.requests
    assert web.requests["baseline"] == pytest.approx(2 * 20 * 60, rel=0.05), web.requests
    assert web.values["success ratio"] == {"canary": 1.0, "baseline": 1.0}
    p99 = web.values["p99 latency"]
    assert p99["canary"] == pytest.approx(p99["baseline"]) and 0.075 < p99["canary"] <= 0.1, p99


def test_five_percent_of_one_service_answered_500_fails_that_service_with_the_numbers(
        prometheus: tuple[str, int]) -> None:
    verdict, findings, results = judge(prometheus, "errors1")
    assert verdict == "fail"
    assert findings == ["web on errors1: success ratio 0.9500 is under 0.9900"], findings
    assert results["search"].crossed == []


def test_three_hundred_ms_more_on_every_request_fails_the_latency_ratio(prometheus: tuple[str, int]) -> None:
    verdict, findings, results = judge(prometheus, "slow1")
    assert verdict == "fail"
    assert sorted(results) == ["search", "web"] and all(r.crossed for r in results.values()), findings
    web = results["web"].values["p99 latency"]
    assert web["canary"] >= 0.4 and web["baseline"] <= 0.1, web  # type: ignore[operator]
    assert f"web on slow1: p99 latency {web['canary'] * 1000:.0f} ms is over 1.5 times the baseline's " \
           f"{web['baseline'] * 1000:.0f} ms" in findings, findings  # type: ignore[operator]
    # The same canary under a looser ratio passes it, and then fails the absolute bound only if it is lower.
    assert judge(prometheus, "slow1", max_p99_ratio=10)[0] == "pass"
    verdict, findings, _ = judge(prometheus, "slow1", max_p99_ratio=10, max_p99_seconds=0.3)
    assert verdict == "fail" and all("p99 latency" in f and "is over 300 ms" in f for f in findings), findings


def test_a_service_that_only_failed_has_a_success_ratio_of_zero(prometheus: tuple[str, int]) -> None:
    verdict, findings, _ = judge(prometheus, "broken1")
    assert verdict == "fail" and "web on broken1: success ratio 0.0000 is under 0.9900" in findings, findings


def test_no_requests_to_a_service_the_baseline_answered_is_inconclusive(prometheus: tuple[str, int]) -> None:
    verdict, findings, _ = judge(prometheus, "quiet1")
    assert verdict == "inconclusive"
    assert findings == ["search: 0 requests on the canary in the last 60 s, fewer than 10: not enough to judge"]
    # A host nobody ever sent a request to: no data at all, never a pass.
    verdict, findings, _ = judge(prometheus, "nosuchhost1")
    assert verdict == "inconclusive" and len(findings) == 2, findings
    # Too few requests: 20/s on web over the window is 1200.
    assert judge(prometheus, "good1", min_requests=5000)[0] == "inconclusive"


def test_with_all_the_traffic_on_the_canary_it_is_held_to_the_absolute_limits(prometheus: tuple[str, int]) -> None:
    """A 100 % step: the baseline took no request in the window, so there is no ratio to compare, but the
    canary's own numbers still count; with no traffic anywhere there is nothing to judge."""
    verdict, findings, results = judge(prometheus, "good1", ["nosuchhost1"])
    assert (verdict, findings, sorted(results)) == ("pass", [], ["search", "web"])
    assert results["web"].values["p99 latency"]["baseline"] is None
    assert judge(prometheus, "errors1", ["nosuchhost1"])[1] == ["web on errors1: success ratio 0.9500 is under 0.9900"]
    assert judge(prometheus, "slow1", ["nosuchhost1"], max_p99_seconds=0.3)[0] == "fail"
    verdict, findings, _ = judge(prometheus, "nosuchhost2", ["nosuchhost1"])
    assert (verdict, findings) == ("inconclusive", ["no requests on the canary or the baseline hosts in the last 60 s"])


def test_a_service_only_the_canary_runs_is_judged_too(prometheus: tuple[str, int]) -> None:
    verdict, findings, results = judge(prometheus, "newer1")
    assert verdict == "fail" and findings == ["labels on newer1: success ratio 0.0000 is under 0.9900"], findings
    assert results["labels"].requests["baseline"] == 0.0


def test_host_names_are_matched_exactly_in_the_queries() -> None:
    """A dot is literal (ip-10-0-0-1.ec2 must not match ip-10-0-0-1xec2) and a quote cannot end the string."""
    assert analysis.hosts_regex(["app1", "ip-10-0-0-1.ec2.internal"]) == "app1|ip-10-0-0-1\\\\.ec2\\\\.internal"
    assert analysis.hosts_regex(['a"b']) == 'a\\"b'


def test_the_module_answers_inconclusive_when_prometheus_does_not(prometheus: tuple[str, int],
                                                                  tmp_path: Path) -> None:
    """Through Ansible, as the deploy calls it: a Prometheus that refuses connections is no pass."""
    url, end = prometheus
    args = {"canary_hosts": ["errors1"], "baseline_hosts": BASELINE, "window": 60, "checks": CHECKS,
            "thresholds": THRESHOLDS, "at": end}

    def run(prometheus_url: str) -> dict[str, Any]:
        done = subprocess.run([str(VENV_BIN / "ansible"), "localhost", "-c", "local", "-i", "localhost,",
                               "-e", f"ansible_python_interpreter={sys.executable}",
                               "-m", "fleetdeploy_canary_analysis", "-a",
                               json.dumps({**args, "prometheus_url": prometheus_url})],
                              capture_output=True, text=True, cwd=REPO, timeout=120, check=False,
                              env={**env(), "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",
                                   "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json"})
        assert done.returncode == 0, done.stdout + done.stderr
        # The JSON report, between the lines profile_tasks prints before and after it.
        report, _ = json.JSONDecoder().raw_decode(done.stdout, done.stdout.index("\n{") + 1)
        return report["plays"][0]["tasks"][0]["hosts"]["localhost"]  # type: ignore[no-any-return]

    failed = run(url)
    assert (failed["verdict"], failed["changed"], failed["attempts"]) == ("fail", False, 1)
    assert failed["message"] == "web on errors1: success ratio 0.9500 is under 0.9900", failed["message"]
    # A step's failure limit: a failed verdict is asked again, and still fails, with its numbers.
    args.update(retries=2, retry_delay=0.1)
    again = run(url)
    assert (again["verdict"], again["attempts"]) == ("fail", 3) and again["message"] == failed["message"], again
    away = run(f"http://127.0.0.1:{free_port()}")
    assert away["verdict"] == "inconclusive" and "did not answer" in away["message"], away


def test_checks_that_name_an_unknown_threshold_or_limit_are_refused() -> None:
    assert analysis.validate({"requests": "x", "checks": [{"name": "a", "query": "q", "limits": [{"at_most": 1}]}]})
    assert analysis.validate({"checks": []})
    assert analysis.validate(CHECKS) is None
    bad = {"name": "a", "format": "", "limits": [{"canary_at_most": "no_such_threshold"}]}
    with pytest.raises(KeyError):
        analysis.crossed(bad, 1.0, None, THRESHOLDS)
