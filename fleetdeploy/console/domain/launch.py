"""Launching: every check a launch goes through, and the launch, approval, rejection, relaunch and cancel of
a job, whichever front end (API, launch form, schedule) asks."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from sqlalchemy.orm import Session

from fleetdeploy.console.config import LAUNCH_OPTIONS, TAG_PATTERN, Action, Environment
from fleetdeploy.console.db import Job
from fleetdeploy.console.domain.errors import ConsoleError
from fleetdeploy.console.domain.reads import Reads, failed_hosts
from fleetdeploy.console.domain.registry import RegistryError
from fleetdeploy.console.redact import MASK, secret_extra_vars
from fleetdeploy.console.runner.manager import Busy, NotPending, RunOptions, ShuttingDown, TooManyPending
from fleetdeploy.console.schedule import Schedule
from fleetdeploy.console.security import Principal
from fleetdeploy.console.status import FAILED, FINAL, PENDING

TAG = re.compile(TAG_PATTERN)
_VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
# Jinja in an extra var is evaluated on the controller (lookup('pipe', ...)): never from a form.
_TEMPLATE = re.compile(r"\{\{|\{%|\{#")
# Who runs a job reaches the playbooks as FLEETDEPLOY_ACTOR (the signed-in principal); an extra var
# of these names would override it (extra vars win over everything), whatever the action's schema.
RESERVED_VARS = frozenset({"deploy_actor", "app_release_actor"})
# Extra vars as JSON, at most: a job's extra vars are stored, served and notified (they reach
# ansible-playbook through a 0600 file); a real set of overrides is a few hundred bytes.
EXTRA_VARS_MAX_BYTES = 32 * 1024
# A host a retry may name in --limit: an inventory host name and nothing of Ansible's pattern language
# (`,` `:` `&` `!` `~` `*` `[...]`, and `@file`, which would read the hosts from a file).
LIMIT_HOST = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}$")
# A launch's --limit, where its action allows one: host and group names with Ansible's pattern operators
# (`,` `:` `&` `!` `*` `[0:2]`), nothing that reads a file (`@`), is a regex (`~`), quotes, spaces or is
# an option (a leading `-`).
LIMIT_PATTERN = re.compile(r"^[A-Za-z0-9_.,:&!*\[\]][A-Za-z0-9_.,:&!*\[\]-]{0,511}$")


class _ExtraVarsLoader(yaml.SafeLoader):
    """YAML that can only mean JSON: no anchors or aliases (a 369-byte alias bomb expands to megabytes),
    no dates (`2024-01-01` stays a string), no !!binary, !!set or other tags beyond JSON's types."""

    # What the text is, for the messages: the extra vars, or one field of the launch form.
    what = "extra vars"

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise ConsoleError(422, f"{self.what}, line {event.start_mark.line + 1}: YAML anchors and aliases "
                                    "(& and *) are not allowed; write each value out")
        return super().compose_node(parent, index)


_ExtraVarsLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _refuse_tag(loader: _ExtraVarsLoader, node: yaml.Node) -> Any:
    raise ConsoleError(422, f"{loader.what}, line {node.start_mark.line + 1}: the YAML tag "
                            f"{node.tag.replace('tag:yaml.org,2002:', '!!')} is not allowed; "
                            "extra vars are strings, numbers, booleans, null, lists and mappings")


for _tag in ("binary", "timestamp", "set", "omap", "pairs"):
    _ExtraVarsLoader.add_constructor(f"tag:yaml.org,2002:{_tag}", _refuse_tag)
_ExtraVarsLoader.add_constructor(None, _refuse_tag)


def parse_extra_vars(text: str, what: str = "extra vars") -> Any:
    """The launch form's extra vars, or the value of one of its YAML fields (`what` names it), as JSON
    values; ConsoleError 4xx when they are not."""
    if len(text.encode()) > EXTRA_VARS_MAX_BYTES:
        raise ConsoleError(413, f"{what}: over {EXTRA_VARS_MAX_BYTES} bytes")
    if not text.strip():
        return {}
    loader = _ExtraVarsLoader(text)
    loader.what = what
    try:
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        raise ConsoleError(422, f"{what}: not valid YAML or JSON: {exc}") from exc
    finally:
        loader.dispose()


def _json_size(extra_vars: dict[str, Any]) -> int:
    """The extra vars' size as JSON; ConsoleError when they hold anything JSON cannot say."""
    def check(value: Any, where: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise ConsoleError(422, f"extra vars{where}: the key {key!r} is not a string")
                check(item, f"{where}/{key}")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                check(item, f"{where}/{i}")
        elif isinstance(value, float) and not math.isfinite(value):
            raise ConsoleError(422, f"extra vars{where}: {value} is not a number JSON can hold")
        elif not isinstance(value, (str, int, float, bool)) and value is not None:
            raise ConsoleError(422, f"extra vars{where}: a {type(value).__name__} is not a JSON value")

    check(extra_vars, "")
    return len(json.dumps(extra_vars, separators=(",", ":")).encode())


@dataclass
class LaunchRequest:
    environment: Environment
    action: Action
    release: str | None
    extra_vars: dict[str, Any]
    options: RunOptions = field(default_factory=RunOptions)


class Launches(Reads):
    """Launch, approve, reject, relaunch and cancel: each checks who asks, then hands the job to the runner."""

    def releases(self, action: Action, fresh: bool = False) -> list[str] | None:
        """The tags an action may deploy, or None when any well-formed tag is accepted."""
        if not action.release or not action.release.repository or not self.registry:
            return None
        try:
            return self.registry.tags(action.release.repository, fresh=fresh)
        except RegistryError as exc:
            raise ConsoleError(503, str(exc)) from exc

    def validate_launch(self, who: Principal, environment: str, action_name: str, release: str | None,
                        extra_vars: Any, limit: str | None = None, check: bool = False,
                        diff: bool = False) -> LaunchRequest:
        """Everything a launch is checked for, from the API, the launch form, a relaunch, an approval or a
        schedule alike: who may run what where, the release, the extra vars, the options its action allows."""
        env = self.config.environments.get(environment)
        if env is None or not who.sees(environment):
            known = ", ".join(e for e in self.config.environments if who.sees(e)) or "none"
            raise ConsoleError(422, f"unknown environment {environment!r} (known: {known})")
        if not who.may("deployer", environment):
            raise ConsoleError(403, f"{who.name} ({who.role}) may not launch jobs on {environment}")
        action = self.config.actions.get(action_name)
        if action is None:
            raise ConsoleError(422, f"unknown action {action_name!r} (known: {', '.join(self.config.actions)})")
        if not who.may(action.role, environment):
            raise ConsoleError(403, f"{who.name} ({who.role}) may not run {action_name} on {environment}; "
                                    f"it needs {action.role}")
        if extra_vars is None:
            extra_vars = {}
        if not isinstance(extra_vars, dict):
            raise ConsoleError(422, "extra vars must be an object of name: value")
        size = _json_size(extra_vars)
        if size > EXTRA_VARS_MAX_BYTES:
            raise ConsoleError(413, f"extra vars are {size} bytes as JSON; at most {EXTRA_VARS_MAX_BYTES}")
        for key, value in extra_vars.items():
            if not _VAR_NAME.match(str(key)) or str(key).startswith("ansible_"):
                raise ConsoleError(422, f"extra var {key!r} is not allowed (a plain name, not ansible_*)")
            if key in RESERVED_VARS:
                raise ConsoleError(422, f"extra var {key!r} is not allowed: the console says who runs the job")
            if _TEMPLATE.search(json.dumps(value)):
                raise ConsoleError(422, f"extra var {key!r} contains a Jinja template; templates are not allowed")
        if action.release:
            var = action.release.variable
            if release is None and var in extra_vars:
                release = str(extra_vars[var])
            if release in (None, ""):
                if action.release.required:
                    raise ConsoleError(422, f"{action_name} needs a release")
                release = None
            else:
                assert release is not None
                if not TAG.match(release):
                    raise ConsoleError(422, f"release {release!r} is not a valid image tag")
                tags = self.releases(action)
                if tags is not None and release not in tags:
                    raise ConsoleError(422, f"release {release!r} is not in the registry's "
                                            f"{action.release.repository} (has: {', '.join(tags[-10:]) or 'no tags'})")
                extra_vars = {**extra_vars, var: release}
        elif release:
            raise ConsoleError(422, f"{action_name} takes no release")
        try:
            jsonschema.validate(extra_vars, action.extra_vars_schema, cls=jsonschema.Draft202012Validator)
        except jsonschema.ValidationError as exc:
            where = "/".join(str(p) for p in exc.absolute_path)
            raise ConsoleError(422, f"extra vars{' at ' + where if where else ''}: {exc.message}") from exc
        options = _run_options(action, limit, check, diff)
        if not action.playbook.is_file():
            raise ConsoleError(422, f"{action_name}'s playbook {action.playbook.name} does not exist on the console")
        if not env.inventory.exists():
            raise ConsoleError(422, f"{environment}'s inventory {env.inventory} does not exist on the console")
        return LaunchRequest(env, action, release, extra_vars, options)

    def launch(self, who: Principal, req: LaunchRequest, ip: str | None, relaunch_of: int | None = None,
               limit: list[str] | None = None) -> int:
        """Start the job, or, where the environment wants an approval for the action, leave it pending."""
        hold = req.environment.needs_approval(req.action.name)

        def record(db: Session, job: Job) -> None:
            # The options named as the job records them (its `limit` is a retry's hosts), where set.
            options = {"limit_pattern": req.options.limit, "check": req.options.check, "diff": req.options.diff}
            detail: dict[str, Any] = {k: v for k, v in options.items() if v}
            if hold:
                detail["pending_approval"] = True
            if relaunch_of is None:
                self.audit(db, who.name, "job_launch", f"job {job.id}", ip=ip, environment=req.environment.name,
                           action=req.action.name, release=req.release, **detail)
            else:
                self.audit(db, who.name, "job_relaunch", f"job {job.id}", ip=ip, environment=req.environment.name,
                           action=req.action.name, release=req.release, relaunch_of=relaunch_of, limit=limit,
                           **detail)

        try:
            return self.jobs.launch(req.environment, req.action, req.release, req.extra_vars, who.name, record,
                                    limit=limit, relaunch_of=relaunch_of, hold=hold, options=req.options)
        except Busy as busy:
            raise ConsoleError(409, str(busy), running=busy.job) from busy
        except TooManyPending as exc:
            raise ConsoleError(429, str(exc)) from exc
        except ShuttingDown as exc:
            raise ConsoleError(503, str(exc)) from exc

    def approval_offer(self, who: Principal, job: dict[str, Any]) -> tuple[bool, str]:
        """Whether `who` may approve or reject a pending job, and if not, why (shown on its page)."""
        action = self.config.actions.get(job["action"])
        if job["status"] != PENDING:
            return False, ""
        if who.via_token:
            # A token is no second person: whoever holds one may also have launched the job as themselves.
            return False, "an approval is a person's, signed in to the console, not a token's"
        if action is None or not who.may(action.role, job["environment"]):
            return False, f"it needs a {action.role if action else 'admin'} of {job['environment']} to approve it"
        if who.name == job["launched_by"]:
            return False, "another person must approve it: you launched it"
        return True, ""

    def may_reject(self, who: Principal, job: dict[str, Any]) -> bool:
        """Whether `who` may reject (or, as its launcher, withdraw) a pending job: anyone who may launch its action there."""
        action = self.config.actions.get(job["action"])
        return job["status"] == PENDING and action is not None and who.may(action.role, job["environment"])

    def approve(self, who: Principal, job_id: int, ip: str | None) -> dict[str, Any]:
        """Start a pending job as approved by `who`: a second person who may launch the action there, who
        sees it checked again as a fresh launch is (the release still in the registry, the schema)."""
        job = self.job(who, job_id)  # 404 outside `who`'s environments
        if job["status"] != PENDING:
            raise ConsoleError(409, f"job {job_id} is {job['status']}; only a pending job can be approved")
        allowed, why = self.approval_offer(who, job)
        if not allowed:
            raise ConsoleError(403, f"{who.name} may not approve job {job_id}: {why}")
        extra_vars = self.jobs.held_extra_vars(job_id)
        if extra_vars is None:
            masked = masked_extra_vars(job)
            if masked:
                raise ConsoleError(409, f"job {job_id}'s extra vars {', '.join(masked)} held secrets, which the "
                                        "console restarted without (it never stores them): reject it and launch anew")
            extra_vars = job["extra_vars"]
        req = self.validate_launch(who, job["environment"], job["action"], job["release"], extra_vars,
                                   job["limit_pattern"], job["check"], job["diff"])

        def record(db: Session, row: Job) -> None:
            self.audit(db, who.name, "job_approve", f"job {job_id}", ip=ip, environment=row.environment,
                       action=row.action, release=row.release, launched_by=row.launched_by)

        try:
            self.jobs.approve(job_id, who.name, req.environment, req.action, req.extra_vars, record)
        except NotPending as exc:
            raise ConsoleError(409, str(exc)) from exc
        except Busy as busy:
            raise ConsoleError(409, f"{busy}; approve again once it has ended", running=busy.job) from busy
        except ShuttingDown as exc:
            raise ConsoleError(503, str(exc)) from exc
        return self.job(who, job_id)

    def reject(self, who: Principal, job_id: int, reason: str, ip: str | None) -> dict[str, Any]:
        """End a pending job without running it: anyone who may launch the action there (its launcher too,
        who withdraws it), with a reason for the record."""
        job = self.job(who, job_id)
        if job["status"] != PENDING:
            raise ConsoleError(409, f"job {job_id} is {job['status']}; only a pending job can be rejected")
        if not self.may_reject(who, job):
            raise ConsoleError(403, f"{who.name} ({who.role}) may not reject job {job_id} on {job['environment']}")
        reason = " ".join(reason.split())[:500]

        def record(db: Session, row: Job) -> None:
            self.audit(db, who.name, "job_reject", f"job {job_id}", ip=ip, environment=row.environment,
                       action=row.action, release=row.release, launched_by=row.launched_by, reason=reason)

        try:
            self.jobs.reject(job_id, who.name, reason, record)
        except NotPending as exc:
            raise ConsoleError(409, str(exc)) from exc
        return self.job(who, job_id)

    def relaunch(self, who: Principal, job_id: int, failed_only: bool, ip: str | None) -> int:
        """Launch job `job_id` again as `who`: its environment, action, release and extra vars, checked by
        validate_launch as a fresh launch is. With `failed_only`, on its failed and unreachable hosts only."""
        old = self.job(who, job_id)  # 404 for a job outside `who`'s environments
        req = self.validate_launch(who, old["environment"], old["action"], old["release"], old["extra_vars"],
                                   old["limit_pattern"], old["check"], old["diff"])
        if old["status"] not in FINAL:
            raise ConsoleError(409, f"job {job_id} is {old['status']}; relaunch it once it has ended")
        masked = masked_extra_vars(old)
        if masked:
            raise ConsoleError(422, f"job {job_id}'s extra vars {', '.join(masked)} held secrets the console does "
                                    "not keep; launch the action anew with them")
        # A relaunch of a retry runs on the same hosts as that retry did.
        limit = failed_hosts(old) if failed_only else old["limit"]
        if failed_only and not limit:
            raise ConsoleError(409, f"job {job_id} has no failed or unreachable host to retry")
        bad = [h for h in limit or [] if not isinstance(h, str) or not LIMIT_HOST.match(h)]
        if bad:
            raise ConsoleError(422, f"job {job_id}'s hosts {', '.join(map(str, bad))} are not inventory host names "
                                    "the console will put in --limit")
        return self.launch(who, req, ip, relaunch_of=job_id, limit=limit)

    def relaunch_offer(self, who: Principal, job: dict[str, Any]) -> tuple[bool, list[str]]:
        """Whether a job's page offers `who` a Relaunch, and the hosts its Retry names (none: no Retry)."""
        action = self.config.actions.get(job["action"])
        if action is None or job["status"] not in FINAL or not who.may(action.role, job["environment"]):
            return False, []
        return True, failed_hosts(job) if job["status"] == FAILED else []

    def cancel(self, who: Principal, job_id: int, ip: str | None) -> dict[str, Any]:
        job = self.job(who, job_id)
        if not who.may("deployer", job["environment"]):
            raise ConsoleError(403, f"{who.name} ({who.role}) may not cancel jobs on {job['environment']}")
        if not self.jobs.cancel(job_id, who.name):
            raise ConsoleError(409, f"job {job_id} is {job['status']}; only a queued or running job can be canceled")
        with self.sessions() as db:
            self.audit(db, who.name, "job_cancel", f"job {job_id}", ip=ip)
            db.commit()
        return self.job(who, job_id)

    def confirmation(self, req: LaunchRequest) -> dict[str, Any]:
        """What the launch form's confirmation page repeats: where, what, and every value the playbook will
        be given, its secrets masked."""
        secret = secret_extra_vars(req.extra_vars, req.action.extra_vars_schema)
        return {
            "req": req, "needs_approval": req.environment.needs_approval(req.action.name),
            "playbook": self._shown_path(req.action.playbook),
            "inventory": self._shown_path(req.environment.inventory),
            # As JSON, so that "2" and 2 differ as they do for the playbook.
            "extra_vars": [(name, MASK if name in secret else json.dumps(value, ensure_ascii=False))
                           for name, value in req.extra_vars.items()],
        }

    def _shown_path(self, path: Path) -> str:
        """A path of the project as its own relative path (playbooks/deploy.yml), else in full."""
        try:
            return str(path.relative_to(self.config.project_dir))
        except ValueError:
            return str(path)

    def record_schedule_skip(self, schedule: Schedule, reason: str) -> None:
        """A schedule's minute that launched nothing (another job ran, a release went missing): audited."""
        with self.sessions() as db:
            self.audit(db, schedule.actor, "schedule_skip", schedule.name, environment=schedule.environment,
                       action=schedule.action, reason=reason[:500])
            db.commit()


def _run_options(action: Action, limit: str | None, check: bool, diff: bool) -> RunOptions:
    """The launch's --limit, --check and --diff, each refused unless the action's `allow` lists it."""
    asked = {"limit": bool(limit), "check": check, "diff": diff}
    refused = [o for o in LAUNCH_OPTIONS if asked[o] and o not in action.allow]
    if refused:
        raise ConsoleError(422, f"{action.name} does not allow {', '.join(refused)} (its `allow` in the "
                                f"console's config: {', '.join(action.allow) or 'nothing'})")
    if limit and not LIMIT_PATTERN.match(limit):
        raise ConsoleError(422, f"limit {limit!r} is not a host pattern the console passes on: host and group "
                                "names with , : & ! * [ ], not starting with -, no spaces, quotes, @ or ~")
    return RunOptions(limit or None, check, diff)


def masked_extra_vars(job: dict[str, Any]) -> list[str]:
    """The extra vars a job stored masked: secrets the console never keeps, so it cannot run the job again."""
    return sorted(k for k, v in job["extra_vars"].items() if v == MASK)

