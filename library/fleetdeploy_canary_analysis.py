#!/usr/bin/python
"""Ansible module: compare canary hosts with baseline hosts in Prometheus, per service, and judge the canary."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: fleetdeploy_canary_analysis
short_description: Judge a canary release from Prometheus, per service, against the hosts still on the old one
description:
  - Runs each check of O(checks) (the file monitoring/canary.yml) over the canary hosts and over the baseline
    hosts for the last O(window) seconds, and holds the canary's value of each service to the check's limits.
  - The verdict is V(pass), V(fail) (a limit was crossed: the message names the service, the check and the
    numbers), or V(inconclusive) (Prometheus did not answer, or a service the baseline answered had fewer
    than C(min_requests) requests on the canary, or no service had any traffic). A deploy promotes on
    V(pass) only.
  - A service the baseline did not answer in the window (the canary had all the traffic, or the service is
    new in the release) is held to the limits that need no baseline.
  - Changes nothing; runs wherever Prometheus is reachable (the monitor host, at 127.0.0.1).
options:
  prometheus_url:
    description: Prometheus's base URL.
    default: http://127.0.0.1:9090
    type: str
  canary_hosts:
    description: The hosts on the new release (their C(host) label).
    required: true
    type: list
    elements: str
  baseline_hosts:
    description: The hosts still on the old release, taking the rest of the traffic.
    required: true
    type: list
    elements: str
  window:
    description: Seconds of history each query looks at (the step's interval).
    required: true
    type: int
  checks:
    description: The checks and the request query, as monitoring/canary.yml holds them.
    required: true
    type: dict
  thresholds:
    description: Values for the threshold names the checks' limits use, and C(min_requests).
    required: true
    type: dict
  at:
    description: Evaluate at this Unix time instead of now.
    type: float
  timeout:
    description: Seconds to wait for each answer from Prometheus.
    default: 10
    type: float
  retries:
    description: How many times a V(fail) verdict is asked again, O(retry_delay) seconds later each time (the
      step's failure limit); a V(pass) or V(inconclusive) one ends the retries.
    default: 0
    type: int
  retry_delay:
    description: Seconds between a failed verdict and the next analysis.
    default: 0
    type: float
"""

EXAMPLES = r"""
- name: Judge the canary's step
  fleetdeploy_canary_analysis:
    canary_hosts: [app1]
    baseline_hosts: [app2, app3]
    window: 60
    checks: "{{ lookup('ansible.builtin.file', 'monitoring/canary.yml') | from_yaml }}"
    thresholds: {min_success_ratio: 0.99, max_p99_seconds: 2, max_p99_ratio: 1.5, p99_ratio_floor_seconds: 0.05,
                 min_requests: 10}
  delegate_to: "{{ groups['monitor'][0] }}"
  register: analysis
"""

RETURN = r"""
verdict:
  description: pass, fail or inconclusive.
  type: str
  returned: always
message:
  description: One line per finding, with the numbers.
  type: str
  returned: always
services:
  description: Per service, the requests and each check's value on both sides, and the limits it crossed.
  type: dict
  returned: always
attempts:
  description: How many analyses ran (1 plus the retries a failed verdict used).
  type: int
  returned: always
"""

import json
import math
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from ansible.module_utils.basic import AnsibleModule

LIMIT_KINDS = ("canary_at_least", "canary_at_most", "canary_at_most_baseline_times")


class NoAnswer(Exception):
    """Prometheus could not be asked or refused the query."""


def hosts_regex(hosts: list[str]) -> str:
    """An RE2 alternation matching exactly these host labels, escaped for a PromQL double-quoted string."""
    escaped = (re.sub(r"([.*+?()\[\]{}|^$\\])", r"\\\1", host) for host in hosts)
    return "|".join(escaped).replace("\\", "\\\\").replace('"', '\\"')


def render(query: str, hosts: list[str], window: int) -> str:
    return query.replace("$hosts", hosts_regex(hosts)).replace("$window", f"{window}s")


class Prometheus:
    def __init__(self, url: str, at: float | None, timeout: float) -> None:
        self.url, self.at, self.timeout = url.rstrip("/"), at, timeout

    def per_service(self, query: str) -> dict[str, float]:
        """The query's value for each `service`; NaN (a quantile of no requests) counts as no value."""
        params = {"query": query}
        if self.at is not None:
            params["time"] = f"{self.at:.3f}"
        request = urllib.request.Request(f"{self.url}/api/v1/query?{urllib.parse.urlencode(params)}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                body = json.load(answer)
        except urllib.error.HTTPError as error:  # Prometheus says why in its JSON
            try:
                why = json.load(error).get("error", "")
            except ValueError:
                why = ""
            raise NoAnswer(f"Prometheus at {self.url} answered HTTP {error.code} {why}".strip()) from error
        except (OSError, ValueError) as error:
            raise NoAnswer(f"Prometheus at {self.url} did not answer: {error}") from error
        if body.get("status") != "success" or body.get("data", {}).get("resultType") != "vector":
            raise NoAnswer(f"Prometheus at {self.url} did not return a vector: {body.get('error', body)}")
        values = {}
        for sample in body["data"]["result"]:
            service = sample["metric"].get("service", "")
            value = float(sample["value"][1])
            if service and not math.isnan(value):
                values[service] = value
        return values


@dataclass
class ServiceResult:
    requests: dict[str, float]
    values: dict[str, dict[str, float | None]] = field(default_factory=dict)
    crossed: list[str] = field(default_factory=list)


def shown(value: float | None, fmt: str) -> str:
    if value is None:
        return "none"
    if fmt == "ratio":
        return f"{value:.4f}"
    if fmt == "seconds":
        return f"{value * 1000:.0f} ms"
    return f"{value:g}"


def threshold(limit: dict[str, Any], key: str, thresholds: dict[str, Any]) -> float:
    named = limit[key]
    if isinstance(named, str):
        if named not in thresholds:
            raise KeyError(f"the threshold {named!r} has no value")
        return float(thresholds[named])
    return float(named)


def crossed(check: dict[str, Any], canary: float, baseline: float | None, thresholds: dict[str, Any]) -> list[str]:
    """What the canary's value breaks, one phrase per limit, with the numbers."""
    fmt = check.get("format", "")
    found = []
    for limit in check.get("limits", []):
        if "canary_at_least" in limit and canary < (bound := threshold(limit, "canary_at_least", thresholds)):
            found.append(f"{check['name']} {shown(canary, fmt)} is under {shown(bound, fmt)}")
        if "canary_at_most" in limit and canary > (bound := threshold(limit, "canary_at_most", thresholds)):
            found.append(f"{check['name']} {shown(canary, fmt)} is over {shown(bound, fmt)}")
        if "canary_at_most_baseline_times" in limit and baseline is not None:
            times = threshold(limit, "canary_at_most_baseline_times", thresholds)
            floor = threshold(limit, "unless_below", thresholds) if "unless_below" in limit else 0.0
            if canary >= floor and canary > baseline * times:
                found.append(f"{check['name']} {shown(canary, fmt)} is over {times:g} times the baseline's "
                             f"{shown(baseline, fmt)}")
    return found


def analyse(prometheus: Prometheus, checks: dict[str, Any], canary: list[str], baseline: list[str], window: int,
            thresholds: dict[str, Any]) -> tuple[str, list[str], dict[str, ServiceResult]]:
    """(verdict, findings, per-service results). Raises NoAnswer when Prometheus cannot be asked."""
    min_requests = float(thresholds.get("min_requests", 1))

    def on_both_sides(query: str) -> dict[str, dict[str, float]]:
        return {side: prometheus.per_service(render(query, hosts, window))
                for side, hosts in (("canary", canary), ("baseline", baseline))}

    requests = on_both_sides(checks["requests"])
    # Every service either side answered. One the baseline did not (a 100 % step, where the old hosts take no
    # requests; a service new in the release) is held to the limits that need no baseline.
    judged = sorted({service for side in requests.values() for service, count in side.items() if count > 0})
    results = {service: ServiceResult({side: requests[side].get(service, 0.0) for side in requests})
               for service in judged}
    if not judged:
        return "inconclusive", [f"no requests on the canary or the baseline hosts in the last {window} s"], results
    findings = [f"{service}: {result.requests['canary']:.0f} requests on the canary in the last {window} s, fewer "
                f"than {min_requests:g}: not enough to judge" for service, result in results.items()
                if result.requests["canary"] < min_requests]
    if findings:
        return "inconclusive", findings, results
    for check in checks["checks"]:
        values = on_both_sides(check["query"])
        for service, result in results.items():
            mine, theirs = values["canary"].get(service), values["baseline"].get(service)
            result.values[check["name"]] = {"canary": mine, "baseline": theirs}
            if mine is None:
                findings.append(f"{service}: no {check['name']} on the canary")
                continue
            for phrase in crossed(check, mine, theirs, thresholds):
                result.crossed.append(phrase)
    failed = [f"{service} on {', '.join(canary)}: {phrase}" for service, result in results.items()
              for phrase in result.crossed]
    if failed:
        return "fail", failed + findings, results
    return ("inconclusive" if findings else "pass"), findings, results


def validate(checks: dict[str, Any]) -> str | None:
    """Why the checks cannot be used, or None."""
    if not isinstance(checks.get("requests"), str) or not isinstance(checks.get("checks"), list):
        return "checks needs a `requests` query and a `checks` list (see monitoring/canary.yml)"
    for check in checks["checks"]:
        if not isinstance(check, dict) or not {"name", "query"} <= set(check):
            return f"each check needs a name and a query: {check!r}"
        for limit in check.get("limits", []):
            if not isinstance(limit, dict) or not set(limit) & set(LIMIT_KINDS):
                return f"check {check['name']!r}: each limit needs one of {', '.join(LIMIT_KINDS)}: {limit!r}"
    return None


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "prometheus_url": {"type": "str", "default": "http://127.0.0.1:9090"},
            "canary_hosts": {"type": "list", "elements": "str", "required": True},
            "baseline_hosts": {"type": "list", "elements": "str", "required": True},
            "window": {"type": "int", "required": True},
            "checks": {"type": "dict", "required": True},
            "thresholds": {"type": "dict", "required": True},
            "at": {"type": "float"},
            "timeout": {"type": "float", "default": 10},
            "retries": {"type": "int", "default": 0},
            "retry_delay": {"type": "float", "default": 0},
        },
        supports_check_mode=True,
    )
    params = module.params
    if problem := validate(params["checks"]):
        module.fail_json(msg=problem)
    if not params["canary_hosts"] or not params["baseline_hosts"]:
        module.fail_json(msg="a canary analysis needs at least one canary host and one baseline host")
    prometheus = Prometheus(params["prometheus_url"], params["at"], params["timeout"])
    attempts = 0
    while True:
        attempts += 1
        try:
            verdict, findings, results = analyse(prometheus, params["checks"], params["canary_hosts"],
                                                 params["baseline_hosts"], params["window"], params["thresholds"])
        except NoAnswer as error:
            verdict, findings, results = "inconclusive", [str(error)], {}
        except KeyError as error:
            module.fail_json(msg=f"the canary checks name a threshold the deploy does not give: {error.args[0]}")
        if verdict != "fail" or attempts > params["retries"]:
            break
        time.sleep(params["retry_delay"])
    module.exit_json(changed=False, verdict=verdict, message="\n".join(findings) or "every check passed",
                     attempts=attempts,
                     services={service: {"requests": result.requests, "checks": result.values,
                                         "crossed": result.crossed} for service, result in results.items()})


if __name__ == "__main__":
    main()
