"""The JSON API under /api: what CI and scripts call with a bearer token (the pages' script too, with a
session). Each route checks who is asking (deps), then calls the domain; none touches the database.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field

from fleetdeploy.console.domain.errors import ConsoleError
from fleetdeploy.console.security import TOKEN_ROLES, Principal
from fleetdeploy.console.web.deps import admin, api_principal, client_ip, console_of, viewer


class JobRequest(BaseModel):
    environment: str = Field(description="An environment (inventory) name, e.g. staging", max_length=64)
    action: str = Field(description="deploy, rollback, provision or an action the admin registered", max_length=64)
    release: str | None = Field(None, description="Image tag; must exist in the registry", max_length=128)
    extra_vars: dict[str, Any] = Field(default_factory=dict, description="Validated against the action's schema")
    limit: str | None = Field(None, max_length=512, description="A host pattern for --limit (web1,web2 or "
                              "app:!web3), where the action's `allow` lists limit")
    check: bool = Field(False, description="Run with --check (nothing changes), where the action allows check")
    diff: bool = Field(False, description="Run with --diff, where the action allows diff")


class RelaunchRequest(BaseModel):
    hosts: Literal["all", "failed"] = Field(
        "all", description="all: every host the job ran on; failed: only those it ended failed or unreachable on")


class RejectRequest(BaseModel):
    reason: str = Field("", max_length=500, description="Why, for the audit log and the job's page")


class TokenRequest(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    role: str = Field(description=f"one of {', '.join(TOKEN_ROLES)}")
    environments: list[str] | None = Field(None, description="None: every environment")


class HostTask(BaseModel):
    counter: int | None = Field(description="The event's place in the job's output")
    play: str
    task: str
    event: str = Field(description="The runner event: runner_on_ok, runner_on_failed, runner_item_on_ok, ...")
    state: str = Field(description="ok, changed, failed, unreachable, skipped (a loop item: its own outcome)")
    created: str | None = Field(description="When the event happened (the controller's clock, UTC)")
    stdout: str = Field(description="The lines ansible-playbook printed for it, redacted like every stored event")
    elapsed: float | None = Field(description="Seconds the task took on the host; None for a loop item")


class HostLog(BaseModel):
    job_id: int
    host: str
    result: str | None = Field(description="The host's outcome in the job (the grid's result column)")
    events_pruned: bool = Field(description="True when retention dropped the job's events: the log is empty")
    tasks: list[HostTask]


class LogMatch(BaseModel):
    counter: int | None
    host: str | None
    task: str
    line: str


class LogSearch(BaseModel):
    job_id: int
    query: str
    host: str | None
    matches: list[LogMatch]
    truncated: bool = Field(description="True when there were more matches than the answer holds")


class ReleaseEntry(BaseModel):
    id: int = Field(description="The job")
    environment: str
    action: str
    service: str | None
    release: str | None
    launched_by: str
    status: str
    rc: int | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    relaunch_of: int | None
    canceled_by: str | None
    explanation: str | None
    digests: dict[str, str] = Field(description="{image:tag: registry digest} the job recorded, if any")
    hosts: dict[str, str] = Field(description="Each host's outcome")


class SettingChange(BaseModel):
    name: str = Field(description="release, or an extra var's name")
    before: Any
    after: Any
    change: Literal["added", "removed", "changed"]


class ReleaseDiff(BaseModel):
    environment: str
    before: int = Field(description="The older job")
    after: int = Field(description="The newer job")
    changes: list[SettingChange]
    same: list[str] = Field(description="Settings both jobs had with the same value")


router = APIRouter(prefix="/api")


@router.get("/me", summary="Who the request is authenticated as")
def me(who: Principal = Depends(api_principal)) -> dict[str, Any]:
    return {"name": who.name, "role": who.role, "environments": who.environments, "token": who.via_token}


@router.get("/schedules", summary="The schedules of the environments this principal sees, with their next run (UTC)")
def schedules(request: Request, who: Principal = Depends(viewer)) -> list[dict[str, Any]]:
    return console_of(request).schedules(who)


@router.get("/environments", summary="Environments (inventories) this principal sees")
def environments(request: Request, who: Principal = Depends(viewer)) -> list[dict[str, Any]]:
    return console_of(request).environments(who)


@router.get("/actions", summary="Actions (playbooks), their release source and extra-vars schema")
def actions(request: Request, who: Principal = Depends(viewer)) -> list[dict[str, Any]]:
    return [{"name": a.name, "description": a.description, "playbook": a.playbook.name, "role": a.role,
             "release": {"variable": a.release.variable, "repository": a.release.repository,
                         "required": a.release.required} if a.release else None,
             "extra_vars_schema": a.extra_vars_schema, "allow": list(a.allow)}
            for a in console_of(request).config.actions.values()]


@router.get("/releases", summary="The tags the registry holds for an action's repository")
def releases(request: Request, action: str, who: Principal = Depends(viewer)) -> dict[str, Any]:
    console = console_of(request)
    act = console.config.actions.get(action)
    if act is None:
        raise ConsoleError(422, f"unknown action {action!r}")
    return {"action": action, "tags": console.releases(act, fresh=True)}


@router.post("/jobs", status_code=201, summary="Launch a job; 409 with who runs what if the environment is busy")
def create_job(body: JobRequest, request: Request, who: Principal = Depends(viewer)) -> dict[str, Any]:
    console = console_of(request)
    req = console.validate_launch(who, body.environment, body.action, body.release, body.extra_vars,
                                  body.limit, body.check, body.diff)
    job_id = console.launch(who, req, client_ip(request))
    job = console.job(who, job_id)
    # status "pending": the environment wants an approval first (docs/console.md, "Approvals"); the events
    # stream has nothing to say until then, so a client waits on GET /api/jobs/{id} for the status to change.
    return {"id": job_id, "url": f"/jobs/{job_id}", "events": f"/api/jobs/{job_id}/events",
            "status": job["status"], "approval_deadline": job["approval_deadline"]}


@router.get("/jobs", summary="Job history, newest first, with filters")
def list_jobs(request: Request, environment: str | None = None, action: str | None = None,
              status: str | None = None, user: str | None = None, before: int | None = None,
              limit: int = Query(50, ge=1, le=500), who: Principal = Depends(viewer)) -> list[dict[str, Any]]:
    return console_of(request).list_jobs(who, environment, action, status, user, before, limit)


@router.get("/jobs/{job_id}", summary="Status, per-host results, the grid and the recap")
def get_job(job_id: int, request: Request, who: Principal = Depends(viewer)) -> dict[str, Any]:
    return console_of(request).job(who, job_id)


@router.get("/jobs/{job_id}/hosts/{host}/log", response_model=HostLog,
            summary="One host's output in the job, task by task, with each task's elapsed time")
def host_log(job_id: int, host: str, request: Request, who: Principal = Depends(viewer)) -> dict[str, Any]:
    return console_of(request).host_log(who, job_id, host)


@router.get("/jobs/{job_id}/log/search", response_model=LogSearch,
            summary="The job's output lines holding a text (case-insensitive), optionally of one host")
def search_log(job_id: int, request: Request, q: str = Query(min_length=1, max_length=200),
               host: str | None = Query(None, max_length=255), who: Principal = Depends(viewer)) -> dict[str, Any]:
    return console_of(request).search_log(who, job_id, q, host)


@router.get("/jobs/{job_id}/log.txt", response_class=PlainTextResponse,
            summary="The job's whole output as plain text (redacted, without colour codes), to download")
def log_text(job_id: int, request: Request, who: Principal = Depends(viewer)) -> PlainTextResponse:
    text = console_of(request).log_text(who, job_id)
    return PlainTextResponse(text, headers={"Content-Disposition": f'attachment; filename="job-{job_id}.log"',
                                            "Cache-Control": "no-store"})


@router.get("/environments/{environment}/releases", response_model=list[ReleaseEntry],
            summary="Release history of an environment: who released what, when, the outcome and image digests")
def release_history(environment: str, request: Request, service: str | None = Query(None, max_length=64),
                    limit: int = Query(100, ge=1, le=500), who: Principal = Depends(viewer)) -> list[dict[str, Any]]:
    return console_of(request).release_history(who, environment, service, limit)


@router.get("/environments/{environment}/releases/diff", response_model=ReleaseDiff,
            summary="What changed in the settings (release, extra vars; secrets masked) between two release jobs")
def release_diff(environment: str, request: Request, before: int = Query(ge=1), after: int = Query(ge=1),
                 who: Principal = Depends(viewer)) -> dict[str, Any]:
    return console_of(request).release_diff(who, environment, before, after)


@router.post("/jobs/{job_id}/relaunch", status_code=201,
             summary="Launch a finished job again as the caller, on every host or on its failed hosts only")
def relaunch_job(job_id: int, request: Request, body: RelaunchRequest | None = None,
                 who: Principal = Depends(viewer)) -> dict[str, Any]:
    console = console_of(request)
    new_id = console.relaunch(who, job_id, body is not None and body.hosts == "failed", client_ip(request))
    return {"id": new_id, "relaunch_of": job_id, "url": f"/jobs/{new_id}", "events": f"/api/jobs/{new_id}/events"}


@router.post("/jobs/{job_id}/approve",
             summary="Approve a pending job (a second person who may launch its action there): it starts now")
def approve_job(job_id: int, request: Request, who: Principal = Depends(viewer)) -> dict[str, Any]:
    return console_of(request).approve(who, job_id, client_ip(request))


@router.post("/jobs/{job_id}/reject", summary="Reject a pending job, with a reason: it never runs")
def reject_job(job_id: int, request: Request, body: RejectRequest | None = None,
               who: Principal = Depends(viewer)) -> dict[str, Any]:
    return console_of(request).reject(who, job_id, body.reason if body else "", client_ip(request))


@router.post("/jobs/{job_id}/cancel", summary="Stop the job's whole process group")
def cancel_job(job_id: int, request: Request, who: Principal = Depends(viewer)) -> dict[str, Any]:
    return console_of(request).cancel(who, job_id, client_ip(request))


@router.post("/alerts", summary="Alertmanager webhook receiver (token role alertmanager or admin)")
async def alerts(request: Request, who: Principal = Depends(api_principal)) -> dict[str, Any]:
    if who.role not in ("alertmanager", "admin"):
        raise ConsoleError(403, f"{who.name} ({who.role}) may not post alerts")
    try:
        payload = json.loads(await request.body())
    except ValueError as exc:
        raise ConsoleError(422, f"body is not JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise ConsoleError(422, "not an Alertmanager webhook: the body must be an object")
    return {"stored": await asyncio.to_thread(console_of(request).receive_alerts, payload)}


@router.get("/audit", summary="The audit log, newest first (admin)")
def audit(request: Request, actor: str | None = None, action: str | None = None,
          limit: int = Query(100, ge=1, le=1000), who: Principal = Depends(admin)) -> list[dict[str, Any]]:
    return console_of(request).audit_log(who, actor, action, limit)


@router.post("/tokens", status_code=201, summary="Create an API token; the token is shown only in this answer")
def create_token(body: TokenRequest, request: Request, who: Principal = Depends(admin)) -> dict[str, Any]:
    row, token = console_of(request).create_token(who, body.name, body.role, body.environments, client_ip(request))
    return {"id": row.id, "name": row.name, "role": row.role, "environments": row.environments, "token": token}


@router.delete("/tokens/{token_id}", summary="Revoke an API token")
def revoke_token(token_id: int, request: Request, who: Principal = Depends(admin)) -> dict[str, Any]:
    row = console_of(request).revoke_token(who, token_id, client_ip(request))
    return {"id": row.id, "revoked": True}
