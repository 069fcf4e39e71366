"""The delivery figures (fleetdeploy/dora.py) from a scripted deploy history, against a hand calculation."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timezone

import pytest

from fleetdeploy import dora

NOW = datetime(2026, 12, 10, tzinfo=timezone.utc)
H = 3600


def run(environment: str, action: str, ended: str, result: str, images: dict | None = None,
        committed: dict | None = None, release: str = "") -> dict:
    """An audit record as finish.yml writes it, with only the keys the figures read (and `revisions`)."""
    record = {"time": ended, "environment": environment, "action": action, "release": release, "user": "ci",
              "run_id": f"{action}-{ended}", "started": ended, "ended": ended, "result": result,
              "hosts": {}, "images": images or {}}
    if committed:
        record["revisions"] = {image: {"revision": "0" * 40, "committed": when} for image, when in committed.items()}
    return record


# prod's history, oldest first; the hand calculation is in the test below.
HISTORY = [
    # Outside the 10-day window: sets what runs, counts for nothing.
    run("prod", "deploy", "2026-11-20T10:00:00Z", "ok", {"web:v0": "a0", "tracking:v0": "t0"}),
    # D1: both services change; lead times 2 h (web) and 1 h (tracking).
    run("prod", "deploy", "2026-12-01T10:00:00Z", "ok", {"web:v1": "a1", "tracking:v1": "t1"},
        {"web:v1": "2026-12-01T08:00:00Z", "tracking:v1": "2026-12-01T09:00:00+00:00"}),
    # D2: tracking's digest is unchanged, so only web is deployed; lead time 4 h.
    run("prod", "deploy", "2026-12-02T10:00:00Z", "ok", {"registry.example:5000/web:v2": "a2", "tracking:v2": "t1"},
        {"registry.example:5000/web:v2": "2026-12-02T06:00:00Z"}),
    # D3: fails before any host changes: two failed deployments, which reach no host.
    run("prod", "deploy", "2026-12-03T12:00:00Z", "failed", {"web:v3": "a3", "tracking:v3": "t3"},
        {"web:v3": "2026-12-03T11:00:00Z"}),
    # D4: both again (tracking still ran t1); restores D3 after 3 h; lead times 4 h (web), 2 h (tracking).
    run("prod", "deploy", "2026-12-03T15:00:00Z", "ok", {"web:v4": "a4", "tracking:v4": "t3"},
        {"web:v4": "2026-12-03T11:00:00Z", "tracking:v4": "2026-12-03T13:00:00Z"}),
    # D5: web, no revision (unknown lead time); a rollback undoes it 30 minutes later.
    run("prod", "deploy", "2026-12-04T10:00:00Z", "ok", {"web:v5": "a5", "tracking:v5": "t3"}),
    run("prod", "rollback", "2026-12-04T10:30:00Z", "ok"),
    # Neither counts: a site run and a lock release.
    run("prod", "site", "2026-12-04T11:00:00Z", "ok"),
    run("prod", "lock release", "2026-12-04T11:30:00Z", "released"),
    # D6: web, partial (a host stayed behind): reached the fleet and failed; lead time 1 h.
    run("prod", "deploy", "2026-12-05T10:00:00Z", "partial", {"web:v6": "a6", "tracking:v6": "t3"},
        {"web:v6": "2026-12-05T09:00:00Z"}),
    # D7: web keeps a6 (the partial deploy put it in service), tracking changes (unknown lead time); restores D6 after 2 h.
    run("prod", "deploy", "2026-12-05T12:00:00Z", "ok", {"web:v7": "a6", "tracking:v7": "t7"}),
    # Another environment's deploy stays its own.
    run("staging", "deploy", "2026-12-05T08:00:00Z", "ok", {"web:v6": "a6"}, {"web:v6": "2026-12-05T07:30:00Z"}),
]


def by_key(rows: list[dora.Figures]) -> dict[tuple[str, str], dict]:
    return {(row.environment, row.service): row.as_dict() for row in rows}


def test_the_figures_of_a_scripted_history_are_the_hand_calculation() -> None:
    table = by_key(dora.figures(HISTORY, NOW, days=10))
    assert set(table) == {("prod", "*"), ("prod", "tracking"), ("prod", "web"), ("staging", "*"), ("staging", "web")}
    web = table["prod", "web"]
    # D1 D2 D3 D4 D5 D6; reached the fleet: all but D3; failed: D3, D5 (rolled back), D6 (partial).
    assert (web["deployments"], web["reached_fleet"], web["failed"]) == (6, 5, 3)
    assert web["deploys_per_day"] == pytest.approx(0.5)
    assert web["change_failure_rate"] == pytest.approx(0.5)
    assert web["lead_time_median_seconds"] == pytest.approx(3 * H)  # median of 2, 4, 4, 1 h
    assert web["unknown_lead_times"] == 1  # D5
    assert web["time_to_restore_median_seconds"] == pytest.approx(2 * H)  # median of 3, 0.5, 2 h
    assert web["unrestored"] == 0
    tracking = table["prod", "tracking"]
    # D1, D3 (failed), D4, D7.
    assert (tracking["deployments"], tracking["reached_fleet"], tracking["failed"]) == (4, 3, 1)
    assert tracking["deploys_per_day"] == pytest.approx(0.3)
    assert tracking["change_failure_rate"] == pytest.approx(0.25)
    assert tracking["lead_time_median_seconds"] == pytest.approx(1.5 * H)  # median of 1, 2 h; D7 unknown
    assert tracking["unknown_lead_times"] == 1
    assert tracking["time_to_restore_median_seconds"] == pytest.approx(3 * H)
    every = table["prod", "*"]
    assert (every["deployments"], every["reached_fleet"], every["failed"]) == (10, 8, 4)
    assert every["lead_time_median_seconds"] == pytest.approx(2 * H)  # 1, 1, 2, 2, 4, 4 h
    assert every["time_to_restore_median_seconds"] == pytest.approx(2.5 * H)  # 0.5, 2, 3, 3 h
    staging = table["staging", "web"]
    assert (staging["deployments"], staging["failed"], staging["change_failure_rate"]) == (1, 0, 0)
    assert staging["lead_time_median_seconds"] == pytest.approx(0.5 * H)
    assert staging["time_to_restore_median_seconds"] is None


def test_the_window_and_an_open_failure() -> None:
    """A window that ends before the last deploys leaves them out; a failure with no good run after it is open."""
    early = by_key(dora.figures(HISTORY, datetime(2026, 12, 3, 13, tzinfo=timezone.utc), days=2))
    # In 2026-12-01T13:00 .. 2026-12-03T13:00: D2 (web) and D3 (web, tracking); D3 is restored later, by D4,
    # which the window leaves out but the history still knows.
    assert (early["prod", "web"]["deployments"], early["prod", "tracking"]["deployments"]) == (2, 1)
    assert early["prod", "web"]["time_to_restore_median_seconds"] == pytest.approx(3 * H)
    failing = HISTORY + [run("prod", "deploy", "2026-12-06T10:00:00Z", "failed", {"postcode:v8": "p8"})]
    postcode = by_key(dora.figures(failing, NOW, days=10))["prod", "postcode"]
    assert (postcode["failed"], postcode["unrestored"], postcode["time_to_restore_median_seconds"]) == (1, 1, None)
    assert postcode["deploys_per_day"] == 0 and postcode["lead_time_median_seconds"] is None


def test_a_rollback_returns_each_service_to_the_digest_it_ran_before() -> None:
    """After D5's rollback web runs a4 again: a deploy of a4 then swaps nothing and is no deployment of web."""
    redeploy = run("prod", "deploy", "2026-12-04T12:00:00Z", "ok", {"web:v4": "a4", "tracking:v4": "t3"})
    found = dora.deployments(HISTORY[:7] + [redeploy])
    assert [d.service for d in found if d.run_id == redeploy["run_id"]] == []
    assert [d.rolled_back for d in found if d.service == "web"] == [False, False, False, False, False, True]


def test_records_are_read_from_the_audit_log_or_the_journal_and_torn_lines_are_skipped() -> None:
    lines = [json.dumps(HISTORY[1]), "", '{"action": "deploy", "environ',  # a torn last line of a copy
             json.dumps({"SYSLOG_IDENTIFIER": "fleetdeploy-audit", "AUDIT_RECORD": json.dumps(HISTORY[2])}),
             json.dumps({"MESSAGE": "not an audit entry"})]
    assert list(dora.read_records(lines)) == [HISTORY[1], HISTORY[2]]


def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fleetdeploy.dora", *args], input=stdin, capture_output=True,
                          text=True, timeout=60, check=False)


def test_the_command_line_prints_a_table_json_and_prometheus_text(tmp_path) -> None:
    log = tmp_path / "audit.log"
    log.write_text("".join(json.dumps(record) + "\n" for record in HISTORY))
    window = ("--now", "2026-12-10T00:00:00Z", "--days", "10")
    table = cli(str(log), *window)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["environment", "service", "deploys/day", "lead", "time", "failure", "rate", "time", "to",
                                "restore"]
    assert lines[3].split() == ["prod", "web", "0.50", "3.0", "h", "(1", "unknown)", "50%", "(3/6)", "2.0", "h"]
    as_json = cli(*window, "--format", "json", stdin=log.read_text())
    assert as_json.returncode == 0, as_json.stderr
    assert by_key(dora.figures(HISTORY, NOW, 10)) == {(r["environment"], r["service"]): r for r in json.loads(as_json.stdout)}
    prometheus = cli(str(log), *window, "--format", "prometheus")
    samples = {line.split(" ")[0]: float(line.split(" ")[1]) for line in prometheus.stdout.splitlines()
               if line and not line.startswith("#")}
    web = 'environment="prod",service="web",window_days="10"'
    assert samples[f"fleetdeploy_dora_change_failure_ratio{{{web}}}"] == 0.5
    assert samples[f"fleetdeploy_dora_lead_time_seconds{{{web}}}"] == 3 * H
    assert samples[f"fleetdeploy_dora_deploys_per_day{{{web}}}"] == 0.5
    # No restore time in staging: the series is left out rather than written as 0.
    assert not any(name.startswith("fleetdeploy_dora_time_to_restore_seconds") and 'environment="staging"' in name
                   for name in samples)
    # The dashboards' markers: the latest run of each environment, action and result, at its end time
    # (a site run and a lock release are not marked). D6 (partial) is the latest partial, D3 the latest failure;
    # the scripted records name no release (the label escaping test below gives one).
    markers = {name: value for name, value in samples.items() if name.startswith("fleetdeploy_run_end_timestamp_seconds")}
    marker = 'fleetdeploy_run_end_timestamp_seconds{{environment="{}",action="{}",result="{}",release="{}"}}'
    assert markers == {
        marker.format("prod", "deploy", "failed", ""): datetime(2026, 12, 3, 12, tzinfo=timezone.utc).timestamp(),
        marker.format("prod", "deploy", "ok", ""): datetime(2026, 12, 5, 12, tzinfo=timezone.utc).timestamp(),
        marker.format("prod", "deploy", "partial", ""): datetime(2026, 12, 5, 10, tzinfo=timezone.utc).timestamp(),
        marker.format("prod", "rollback", "ok", ""): datetime(2026, 12, 4, 10, 30, tzinfo=timezone.utc).timestamp(),
        marker.format("staging", "deploy", "ok", ""): datetime(2026, 12, 5, 8, tzinfo=timezone.utc).timestamp(),
    }, markers


def test_a_label_value_is_escaped_as_prometheus_reads_it() -> None:
    odd = 'v"1\\x\nmore'
    history = [run(odd, "deploy", "2026-12-01T10:00:00Z", "ok", {"web:v1": "a1"}, release=odd)]
    text = dora.as_prometheus(dora.figures(history, NOW, 30), dora.last_runs(history))
    escaped = 'v\\"1\\\\x\\nmore'
    assert f'release="{escaped}"}}' in text and f'fleetdeploy_dora_deployments{{environment="{escaped}",' in text, text
    # A run that names no release is marked with an empty one, not "None".
    no_release = {**run("prod", "rollback", "2026-12-01T11:00:00Z", "ok"), "release": None}
    assert 'release=""}' in dora.as_prometheus([], [no_release])


def test_a_rollback_that_failed_undoes_nothing() -> None:
    history = [run("prod", "deploy", "2026-12-01T10:00:00Z", "ok", {"web:v1": "a1"}),
               run("prod", "deploy", "2026-12-02T10:00:00Z", "ok", {"web:v2": "a2"}),
               run("prod", "rollback", "2026-12-02T10:30:00Z", "failed"),
               # v2's digest still runs, so this deploy of the same digest is no deployment.
               run("prod", "deploy", "2026-12-03T10:00:00Z", "ok", {"web:v2b": "a2"})]
    web = by_key(dora.figures(history, NOW, 30))[("prod", "web")]
    assert (web["deployments"], web["failed"]) == (2, 0), web


def test_a_journal_entry_that_is_no_record_is_skipped() -> None:
    good = run("prod", "deploy", "2026-12-01T10:00:00Z", "ok")
    lines = [json.dumps({"AUDIT_RECORD": [123, 34]}), json.dumps({"AUDIT_RECORD": "{torn"}),
             json.dumps({"AUDIT_RECORD": json.dumps(good)})]
    assert list(dora.read_records(lines)) == [good]


def test_the_command_line_refuses_bad_input_clearly(tmp_path) -> None:
    missing = cli(str(tmp_path / "nope.log"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr and "nope.log" in missing.stderr
    assert cli("--days", "0").returncode == 2
    bad_time = cli("--now", "yesterday")
    assert bad_time.returncode == 2 and "--now" in bad_time.stderr
    empty = cli("--days", "7", stdin="")
    assert empty.returncode == 0 and "No deployment in the 7 days" in empty.stdout
    both = cli(str(tmp_path / "audit.log"), "--dynamodb", "locks")
    assert both.returncode == 2 and "not both" in both.stderr
