"""The four delivery figures (DORA) from the deploy history that the audit records keep.

Per environment and per service, over a window of days:

- deploy frequency: the deployments that reached the fleet (result ok or partial), per day;
- lead time for changes: from the commit an image was built from to the end of the deploy that put it in
  service (needs the record's `revisions`; a deployment without one is counted as of unknown lead time);
- change failure rate: the deployments that failed (result failed or partial) or that a rollback undid
  before the environment's next deploy, over all deployments;
- time to restore: from the end of a failed deployment (or of the deploy a rollback undid) to the end of the
  next run that left the environment good (a deploy or a rollback with result ok).

A *deployment of a service* is a deploy whose `images` give the service (the image name before the tag) a
digest other than the one it was running: a release that changes only `tracking` is one deployment, of
tracking. A rollback returns each service to the digest it ran before its last deployment.
docs/deploy.md ("Delivery figures") says the same for users; the records' keys are in "The audit log".
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

GOOD = "ok"
REACHED_FLEET = ("ok", "partial")
FAILED = ("failed", "partial")


def parse_time(text: str) -> datetime:
    """An audit record's ISO 8601 time ('...Z' or with an offset), as an aware datetime."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(timezone.utc)


@dataclass
class Deployment:
    """One service's new digest going out in one deploy run."""

    environment: str
    service: str
    release: str
    run_id: str
    ended: datetime
    result: str
    committed: datetime | None
    rolled_back: bool = False
    restored: datetime | None = None

    @property
    def failed(self) -> bool:
        return self.result in FAILED or self.rolled_back

    @property
    def lead_time(self) -> float | None:
        return (self.ended - self.committed).total_seconds() if self.committed else None

    @property
    def time_to_restore(self) -> float | None:
        return (self.restored - self.ended).total_seconds() if self.failed and self.restored else None


def read_records(lines: Iterable[str]) -> Iterator[dict]:
    """Audit records from the audit log's lines, or from `journalctl -o json` lines (their AUDIT_RECORD);
    anything else (a blank line, a torn last line) is skipped."""
    for line in lines:
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "AUDIT_RECORD" in record:
            try:
                # journalctl prints a field that is not UTF-8 as a list of bytes: not a record either.
                record = json.loads(record["AUDIT_RECORD"]) if isinstance(record["AUDIT_RECORD"], str) else None
            except json.JSONDecodeError:
                continue
        if isinstance(record, dict) and {"action", "environment", "ended", "result"} <= set(record):
            yield record


def read_dynamodb(table: str, region: str | None) -> Iterator[dict]:
    """Audit records from the DynamoDB table beside the deploy lock (`deploy_lock_backend: dynamodb`), where
    library/fleetdeploy_audit.py keeps each under the key `audit/<environment>/<started>/<run_id>`. boto3
    reads the credentials and AWS_ENDPOINT_URL as the playbooks do; only this source needs it."""
    import boto3  # the ops host runs this script with the standard library alone

    pages = boto3.client("dynamodb", region_name=region).get_paginator("scan").paginate(
        TableName=table, FilterExpression="begins_with(#k, :audit)", ConsistentRead=True,
        ExpressionAttributeNames={"#k": "lock"}, ExpressionAttributeValues={":audit": {"S": "audit/"}})
    for page in pages:
        for item in page["Items"]:
            yield from read_records([item["body"]["S"]])


def last_runs(records: Iterable[dict]) -> list[dict]:
    """The latest deploy or rollback of each environment, action and result: the runs Grafana marks on the
    dashboards (a marker's time is its series' value, so each new run of a kind is a new marker)."""
    latest: dict[tuple[str, str, str], dict] = {}
    for record in records:
        if record["action"] not in ("deploy", "rollback"):
            continue
        key = (record["environment"], record["action"], record["result"])
        if key not in latest or parse_time(record["ended"]) >= parse_time(latest[key]["ended"]):
            latest[key] = record
    return [latest[key] for key in sorted(latest)]


def image_service(image_tag: str) -> str:
    """'registry:5000/web:v2' -> 'web': the image's last path part, without its tag."""
    return image_tag.rsplit("/", 1)[-1].split(":", 1)[0]


def deployments(records: Iterable[dict]) -> list[Deployment]:
    """Every deployment of every service, with its failure and restore worked out from the runs after it."""
    runs = sorted((r for r in records if r["action"] in ("deploy", "rollback")), key=lambda r: parse_time(r["ended"]))
    found: list[Deployment] = []
    running: dict[tuple[str, str], str] = {}  # (environment, service) -> digest in service
    before: dict[tuple[str, str], str] = {}  # (environment, service) -> digest before its last deployment
    last_deploy: dict[str, list[Deployment]] = {}  # environment -> deployments of its latest deploy run
    open_failures: dict[str, list[Deployment]] = {}  # environment -> failed deployments not yet restored
    for run in runs:
        environment, ended, result = run["environment"], parse_time(run["ended"]), run["result"]
        if run["action"] == "rollback":
            # A rollback that failed outright put nothing back: the deploy before it still stands.
            for deployment in last_deploy.pop(environment, []) if result in REACHED_FLEET else []:
                key = (environment, deployment.service)
                if not deployment.failed:
                    deployment.rolled_back = True
                    open_failures.setdefault(environment, []).append(deployment)
                if key in before:
                    running[key] = before.pop(key)
        else:
            revisions = run.get("revisions") or {}
            this_run = []
            for image_tag, digest in sorted((run.get("images") or {}).items()):
                service = image_service(image_tag)
                key = (environment, service)
                if running.get(key) == digest:
                    continue
                committed = (revisions.get(image_tag) or {}).get("committed")
                deployment = Deployment(environment, service, str(run.get("release", "")), str(run.get("run_id", "")),
                                        ended, result, parse_time(committed) if committed else None)
                found.append(deployment)
                this_run.append(deployment)
                if result in FAILED:
                    open_failures.setdefault(environment, []).append(deployment)
                if result in REACHED_FLEET:
                    if key in running:
                        before[key] = running[key]
                    running[key] = digest
            last_deploy[environment] = this_run
        if result == GOOD:
            for deployment in open_failures.pop(environment, []):
                deployment.restored = ended
    return found


@dataclass
class Figures:
    """The four figures for one environment and one service ('*' for every service together)."""

    environment: str
    service: str
    days: float
    deployments: int = 0
    reached_fleet: int = 0
    failed: int = 0
    lead_times: list[float] = field(default_factory=list)
    unknown_lead_times: int = 0
    restore_times: list[float] = field(default_factory=list)
    unrestored: int = 0

    @property
    def deploys_per_day(self) -> float:
        return self.reached_fleet / self.days

    @property
    def change_failure_rate(self) -> float | None:
        return self.failed / self.deployments if self.deployments else None

    @property
    def lead_time_median(self) -> float | None:
        return statistics.median(self.lead_times) if self.lead_times else None

    @property
    def time_to_restore_median(self) -> float | None:
        return statistics.median(self.restore_times) if self.restore_times else None

    def add(self, deployment: Deployment) -> None:
        self.deployments += 1
        self.reached_fleet += deployment.result in REACHED_FLEET
        if deployment.failed:
            self.failed += 1
            if deployment.time_to_restore is None:
                self.unrestored += 1
            else:
                self.restore_times.append(deployment.time_to_restore)
        if deployment.result in REACHED_FLEET:
            if deployment.lead_time is None:
                self.unknown_lead_times += 1
            else:
                self.lead_times.append(deployment.lead_time)

    def as_dict(self) -> dict:
        return {"environment": self.environment, "service": self.service, "days": self.days,
                "deployments": self.deployments, "reached_fleet": self.reached_fleet, "failed": self.failed,
                "deploys_per_day": self.deploys_per_day, "change_failure_rate": self.change_failure_rate,
                "lead_time_median_seconds": self.lead_time_median, "unknown_lead_times": self.unknown_lead_times,
                "time_to_restore_median_seconds": self.time_to_restore_median, "unrestored": self.unrestored}


def figures(records: Iterable[dict], now: datetime, days: float = 30) -> list[Figures]:
    """The figures of each environment and service, over the `days` before `now`, sorted; a service's
    failure or restore is read from the whole history, so a window starting mid-incident is still right."""
    since = now - timedelta(days=days)
    table: dict[tuple[str, str], Figures] = {}
    for deployment in deployments(records):
        if not since <= deployment.ended <= now:
            continue
        for service in (deployment.service, "*"):
            key = (deployment.environment, service)
            table.setdefault(key, Figures(deployment.environment, service, days)).add(deployment)
    return [table[key] for key in sorted(table)]


def _hours(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 3600:.1f} h"


def as_table(rows: list[Figures]) -> str:
    header = ("environment", "service", "deploys/day", "lead time", "failure rate", "time to restore")
    lines = [header]
    for row in rows:
        rate = "-" if row.change_failure_rate is None else f"{row.change_failure_rate:.0%} ({row.failed}/{row.deployments})"
        lead = _hours(row.lead_time_median) + (f" ({row.unknown_lead_times} unknown)" if row.unknown_lead_times else "")
        restore = _hours(row.time_to_restore_median) + (f" ({row.unrestored} open)" if row.unrestored else "")
        lines.append((row.environment, row.service, f"{row.deploys_per_day:.2f}", lead, rate, restore))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines)


def _label(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def as_prometheus(rows: list[Figures], runs: Iterable[dict] = ()) -> str:
    """Prometheus' text format, for node_exporter's textfile collector: the figures, and the end time of
    each of `runs` (last_runs) for the dashboards' markers."""
    metrics = (
        ("fleetdeploy_dora_deployments", "gauge", "Deployments in the window.", lambda r: r.deployments),
        ("fleetdeploy_dora_deploys_per_day", "gauge", "Deployments that reached the fleet, per day.",
         lambda r: r.deploys_per_day),
        ("fleetdeploy_dora_lead_time_seconds", "gauge", "Median time from commit to the end of its deploy.",
         lambda r: r.lead_time_median),
        ("fleetdeploy_dora_change_failure_ratio", "gauge", "Deployments that failed or were rolled back, over all.",
         lambda r: r.change_failure_rate),
        ("fleetdeploy_dora_time_to_restore_seconds", "gauge", "Median time from a failed deployment to the next good run.",
         lambda r: r.time_to_restore_median),
    )
    out = []
    for name, kind, text, value in metrics:
        out += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
        for row in rows:
            number = value(row)
            if number is not None:
                labels = f'environment="{_label(row.environment)}",service="{_label(row.service)}",window_days="{row.days:g}"'
                out.append(f"{name}{{{labels}}} {number:.6g}")
    name = "fleetdeploy_run_end_timestamp_seconds"
    out += [f"# HELP {name} When the latest deploy or rollback of each kind and result ended.", f"# TYPE {name} gauge"]
    for run in runs:
        labels = ",".join(f'{key}="{_label(run.get(key) or "")}"' for key in ("environment", "action", "result", "release"))
        out.append(f"{name}{{{labels}}} {parse_time(run['ended']).timestamp():.3f}")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fleetdeploy-dora", description=__doc__.split("\n\n")[0])
    parser.add_argument("logs", nargs="*", type=Path,
                        help="audit logs (the ops host's /var/log/fleetdeploy/audit.log, or journalctl -o json); "
                             "standard input when none is given")
    parser.add_argument("--dynamodb", metavar="TABLE",
                        help="read the records from this DynamoDB table (the deploy lock's), instead of logs")
    parser.add_argument("--region", help="the table's region (default: boto3's, from AWS_REGION or the profile)")
    parser.add_argument("--days", type=float, default=30, help="the window, in days before --now (default 30)")
    parser.add_argument("--now", type=parse_time, default=None, help="the window's end, ISO 8601 (default: now)")
    parser.add_argument("--format", choices=("table", "json", "prometheus"), default="table")
    args = parser.parse_args(argv)
    if args.days <= 0:
        parser.error("--days must be above 0")
    if args.dynamodb and args.logs:
        parser.error("give audit logs or --dynamodb, not both")
    if args.dynamodb:
        from botocore.exceptions import BotoCoreError, ClientError  # no credentials or region; no table

        try:
            records = list(read_dynamodb(args.dynamodb, args.region))
        except (BotoCoreError, ClientError) as error:
            parser.error(f"cannot read the audit records in DynamoDB table {args.dynamodb}: {error}")
    else:
        lines: list[str] = []
        for path in args.logs:
            try:
                lines += path.read_text().splitlines()
            except OSError as error:
                parser.error(f"cannot read {path}: {error.strerror}")
        if not args.logs:
            lines = sys.stdin.read().splitlines()
        records = list(read_records(lines))
    rows = figures(records, args.now or datetime.now(timezone.utc), args.days)
    if args.format == "json":
        print(json.dumps([row.as_dict() for row in rows], indent=2))
    elif args.format == "prometheus":
        sys.stdout.write(as_prometheus(rows, last_runs(records)))
    else:
        print(as_table(rows) if rows else f"No deployment in the {args.days:g} days before the window's end.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
