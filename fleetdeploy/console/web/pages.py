"""The HTML pages: sign-in, dashboard, launch, job view, job history, audit log, users and tokens.

Each page checks who is asking (deps), calls the domain, and renders a template; none touches the database.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from fleetdeploy.console import status as job_status
from fleetdeploy.console.domain.admin import admins_only, parse_environments
from fleetdeploy.console.domain.errors import ConsoleError
from fleetdeploy.console.security import ROLES, TOKEN_ROLES, Principal
from fleetdeploy.console.web.deps import (
    COOKIE,
    checked_form,
    checked_items,
    client_ip,
    console_of,
    page_principal,
    who_is_asking,
)
from fleetdeploy.console.web.launchform import LaunchForm, fields_of, takes_free_vars

templates = Jinja2Templates(directory=Path(__file__).resolve().parent / "templates")
router = APIRouter(include_in_schema=False)
# Each status's badge (a class of console.css).
STATUS_CLASS = {
    job_status.PENDING: "pending", job_status.QUEUED: "pending", job_status.RUNNING: "running",
    job_status.SUCCESSFUL: "ok", job_status.FAILED: "failed", job_status.ERROR: "failed",
    job_status.CANCELED: "canceled", job_status.INTERRUPTED: "canceled", job_status.REJECTED: "canceled",
    job_status.EXPIRED: "canceled",
}
templates.env.globals["status_class"] = lambda s: STATUS_CLASS.get(s, "pending")
# The templates and the job page's script name statuses through these, not by copies of their own.
templates.env.globals["job_status"] = job_status
templates.env.globals["status_classes"] = STATUS_CLASS


def _duration(seconds: float | None) -> str:
    """Elapsed seconds as a person reads them: 42s, 3m 05s, 1h 02m."""
    if seconds is None:
        return "not started"
    whole = int(seconds)
    if whole < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    return f"{whole // 3600}h {whole % 3600 // 60:02d}m"


templates.env.globals["duration"] = _duration


def render(request: Request, template: str, who: Principal | None, status: int = 200, **ctx: Any) -> HTMLResponse:
    console = console_of(request)
    may_launch = who is not None and any(who.may("deployer", e) for e in console.config.environments)
    return templates.TemplateResponse(request, template, {"who": who, "may_launch": may_launch, **ctx},
                                      status_code=status)


async def error_page(request: Request, exc: ConsoleError) -> Response:
    if exc.status == 401:
        return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)
    who = who_is_asking(request)
    return render(request, "error.html", who if who and not who.via_token else None, status=exc.status,
                  message=exc.message, code=exc.status)


def _secure(request: Request) -> bool:
    mode = console_of(request).config.secure_cookies
    return mode == "always" or (mode == "auto" and request.url.scheme == "https")


@router.get("/login")
def login_page(request: Request, next: str = "/") -> Response:
    return render(request, "login.html", None, next=next if next.startswith("/") and not next.startswith("//") else "/")


@router.post("/login")
async def login(request: Request) -> Response:
    form = await request.form()
    name, password = str(form.get("name", ""))[:64], str(form.get("password", ""))[:1024]
    nxt = str(form.get("next", "/"))
    if not nxt.startswith("/") or nxt.startswith("//"):
        nxt = "/"
    console = console_of(request)
    try:
        cookie, _ = console.sign_in(name, password, client_ip(request))
    except ConsoleError as exc:
        headers = {"Retry-After": str(exc.extra["retry_after"])} if "retry_after" in exc.extra else None
        resp = render(request, "login.html", None, status=exc.status, error=exc.message, next=nxt, name=name)
        if headers:
            resp.headers.update(headers)
        return resp
    done = RedirectResponse(nxt, status_code=303)
    done.set_cookie(COOKIE, cookie, httponly=True, samesite="strict", secure=_secure(request),
                    max_age=int(console.config.session_hours * 3600), path="/")
    return done


@router.post("/logout")
async def logout(request: Request) -> Response:
    who = page_principal(request)
    form = await checked_form(request, who)
    console_of(request).sign_out(request.cookies.get(COOKIE, ""), everywhere=bool(form.get("everywhere")))
    resp = RedirectResponse("/login", status_code=303)
    resp.delete_cookie(COOKIE, path="/")
    return resp


@router.get("/")
def dashboard(request: Request) -> Response:
    who = page_principal(request)
    return render(request, "dashboard.html", who, environments=console_of(request).dashboard(who))


@router.get("/launch")
def launch_page(request: Request, environment: str = "", action: str = "") -> Response:
    return _launch_view(request, page_principal(request), LaunchForm.of([("environment", environment),
                                                                          ("action", action)]))


def _launch_view(request: Request, who: Principal, form: LaunchForm, error: str = "", status: int = 200) -> Response:
    """The form for the action `form` names (else the first), with every value `form` holds."""
    console = console_of(request)
    envs = [e for e in console.config.environments if who.may("deployer", e)]
    if not envs:
        raise ConsoleError(403, f"{who.name} ({who.role}) may not launch jobs")
    actions = [a for a in console.config.actions.values() if any(who.may(a.role, e) for e in envs)]
    chosen = console.config.actions.get(form.action) or (actions[0] if actions else None)
    tags: list[str] | None = None
    registry_error = ""
    if chosen is not None:
        try:
            tags = console.releases(chosen, fresh=True)
        except ConsoleError as exc:
            registry_error = exc.message
    return render(request, "launch.html", who, status=status, environments=envs, actions=actions, chosen=chosen,
                  environment=form.environment or envs[0], tags=list(reversed(tags)) if tags else tags,
                  registry_error=registry_error, error=error, form=form,
                  fields=fields_of(chosen) if chosen else [], free_vars=chosen is not None and takes_free_vars(chosen),
                  schema=json.dumps(chosen.extra_vars_schema, indent=2) if chosen else "")


@router.post("/launch")
async def launch(request: Request) -> Response:
    """The launch form's three steps (its `step`): review (checked, then the confirmation page), edit (the
    form again, values kept: Back, or another action chosen) and launch (checked again, then launched)."""
    who = page_principal(request)
    form = LaunchForm.of(await checked_items(request, who))
    if form.step == "edit":
        return _private(_launch_view(request, who, form))
    console = console_of(request)
    action = console.config.actions.get(form.action)
    try:
        extra = form.extra_vars(fields_of(action) if action else [])
        req = console.validate_launch(who, form.environment, form.action, form.release or None, extra,
                                      form.limit or None, form.check, form.diff)
        if form.step != "launch":
            return _private(render(request, "launch_confirm.html", who, form=form, **console.confirmation(req)))
        job_id = console.launch(who, req, client_ip(request))
    except ConsoleError as exc:
        if exc.status in (401,):
            raise
        # Rendered in place, not redirected: the extra vars must not travel in a URL (and the access log).
        return _private(_launch_view(request, who, form, exc.message, exc.status))
    return RedirectResponse(f"/jobs/{job_id}", status_code=303)


def _private(response: Response) -> Response:
    """A launch form's answer holds what was typed (secrets too): never kept by a cache."""
    response.headers["Cache-Control"] = "no-store"
    return response


@router.get("/jobs")
def history(request: Request, environment: str = "", action: str = "", status: str = "", user: str = "",
            before: int | None = None) -> Response:
    who = page_principal(request)
    console = console_of(request)
    jobs = console.list_jobs(who, environment or None, action or None, status or None, user or None, before, 50)
    more = ""
    if len(jobs) == 50:
        query = {"environment": environment, "action": action, "status": status, "user": user,
                 "before": jobs[-1]["id"]}
        more = f"/jobs?{urlencode(query)}"
    return render(request, "jobs.html", who, jobs=jobs, more=more,
                  filters={"environment": environment, "action": action, "status": status, "user": user},
                  environments=[e for e in console.config.environments if who.sees(e)],
                  actions=list(console.config.actions),
                  statuses=job_status.ALL)


@router.get("/jobs/{job_id}")
def job_page(request: Request, job_id: int) -> Response:
    who = page_principal(request)
    console = console_of(request)
    job = console.job(who, job_id)
    may_relaunch, retry_hosts = console.relaunch_offer(who, job)
    may_approve, why_not = console.approval_offer(who, job)
    return render(request, "job.html", who, job=job, may_cancel=who.may("deployer", job["environment"]),
                  may_relaunch=may_relaunch, retry_hosts=retry_hosts, may_approve=may_approve,
                  why_not_approve=why_not, may_reject=console.may_reject(who, job))


@router.get("/environments/{environment}/releases")
def releases_page(request: Request, environment: str, service: str = "") -> Response:
    who = page_principal(request)
    console = console_of(request)
    entries = console.release_history(who, environment, service or None, 200)
    services = sorted({a.service for a in console.config.actions.values() if a.service})
    return render(request, "releases.html", who, environment=environment, entries=entries, service=service,
                  services=services)


@router.get("/environments/{environment}/releases/diff")
def release_diff_page(request: Request, environment: str, before: int, after: int) -> Response:
    who = page_principal(request)
    if before > after:
        before, after = after, before
    diff = console_of(request).release_diff(who, environment, before, after)
    return render(request, "release_diff.html", who, environment=environment, diff=diff)


@router.post("/jobs/{job_id}/relaunch")
async def relaunch(request: Request, job_id: int) -> Response:
    who = page_principal(request)
    form = await checked_form(request, who)
    new_id = console_of(request).relaunch(who, job_id, form.get("hosts") == "failed", client_ip(request))
    return RedirectResponse(f"/jobs/{new_id}", status_code=303)


@router.post("/jobs/{job_id}/approve")
async def approve(request: Request, job_id: int) -> Response:
    who = page_principal(request)
    await checked_form(request, who)
    console_of(request).approve(who, job_id, client_ip(request))
    return RedirectResponse(f"/jobs/{job_id}", status_code=303)


@router.post("/jobs/{job_id}/reject")
async def reject(request: Request, job_id: int) -> Response:
    who = page_principal(request)
    form = await checked_form(request, who)
    console_of(request).reject(who, job_id, form.get("reason", ""), client_ip(request))
    return RedirectResponse(f"/jobs/{job_id}", status_code=303)


@router.post("/jobs/{job_id}/cancel")
async def cancel(request: Request, job_id: int) -> Response:
    who = page_principal(request)
    await checked_form(request, who)
    console_of(request).cancel(who, job_id, client_ip(request))
    return RedirectResponse(f"/jobs/{job_id}", status_code=303)


@router.get("/audit")
def audit_page(request: Request, actor: str = "", action: str = "") -> Response:
    who = page_principal(request)
    entries = console_of(request).audit_log(who, actor, action, 200)
    return render(request, "audit.html", who, entries=entries, actor=actor, action=action)


def _admin(request: Request) -> Principal:
    return admins_only(page_principal(request))


@router.get("/admin/users")
def users_page(request: Request, error: str = "") -> Response:
    who = _admin(request)
    users = console_of(request).users(who)
    return render(request, "users.html", who, users=users, roles=ROLES, error=error)


@router.post("/admin/users")
async def save_user(request: Request) -> Response:
    """Add a user, or (the form of a user's row, `update` set) change its role, scope and password."""
    who = _admin(request)
    form = await checked_form(request, who)
    try:
        console_of(request).save_user(who, form.get("name", "").strip(), form.get("role", ""),
                                      parse_environments(form.get("environments")), form.get("password", ""),
                                      client_ip(request), update=form.get("update") == "1")
    except ConsoleError as exc:
        return RedirectResponse(f"/admin/users?{urlencode({'error': exc.message})}", status_code=303)
    return RedirectResponse("/admin/users", status_code=303)


@router.post("/admin/users/{user_id}/{verb}")
async def change_user(request: Request, user_id: int, verb: str) -> Response:
    who = _admin(request)
    await checked_form(request, who)
    if verb not in ("disable", "enable"):
        raise ConsoleError(404, "no such page")
    console_of(request).set_user_disabled(who, user_id, verb == "disable", client_ip(request))
    return RedirectResponse("/admin/users", status_code=303)


@router.get("/admin/tokens")
def tokens_page(request: Request, error: str = "") -> Response:
    who = _admin(request)
    tokens = console_of(request).tokens(who)
    return render(request, "tokens.html", who, tokens=tokens, roles=TOKEN_ROLES, error=error, new_token=None)


@router.post("/admin/tokens")
async def create_token(request: Request) -> Response:
    who = _admin(request)
    form = await checked_form(request, who)
    console = console_of(request)
    name = form.get("name", "").strip()
    try:
        _, token = console.create_token(who, name, form.get("role", ""), parse_environments(form.get("environments")),
                                        client_ip(request))
    except ConsoleError as exc:
        return RedirectResponse(f"/admin/tokens?{urlencode({'error': exc.message})}", status_code=303)
    tokens = console.tokens(who)
    # Shown once, in this answer only; never cached.
    resp = render(request, "tokens.html", who, tokens=tokens, roles=TOKEN_ROLES, error="", new_token=token,
                  new_name=name)
    resp.headers["Cache-Control"] = "no-store"
    return resp


@router.post("/admin/tokens/{token_id}/revoke")
async def revoke_token(request: Request, token_id: int) -> Response:
    who = _admin(request)
    await checked_form(request, who)
    console_of(request).revoke_token(who, token_id, client_ip(request))
    return RedirectResponse("/admin/tokens", status_code=303)
