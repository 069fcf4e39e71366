"""What every route needs: the domain (the Console), who is asking, the client's address, a checked form."""

from __future__ import annotations

from fastapi import Depends, Request

from fleetdeploy.console.domain.admin import admins_only
from fleetdeploy.console.domain.console import Console
from fleetdeploy.console.domain.errors import ConsoleError
from fleetdeploy.console.security import Principal, same

COOKIE = "fd_session"


def client_ip(request: Request) -> str:
    """The client's address: the connection's, or what a trusted proxy (security.trusted_proxies) says."""
    return request.client.host[:64] if request.client else "-"


def console_of(request: Request) -> Console:
    return request.app.state.console  # type: ignore[no-any-return]


def credentials(request: Request) -> tuple[str | None, str | None]:
    """The bearer token (CI) and the session cookie (browser) the request carries."""
    auth = request.headers.get("authorization", "")
    token = auth[7:].strip() if auth.lower().startswith("bearer ") else None
    return token, request.cookies.get(COOKIE)


def who_is_asking(request: Request) -> Principal | None:
    """A bearer token (CI) or the session cookie (browser); None when neither is valid."""
    return console_of(request).principal_of(*credentials(request))


# ----- the API's principals (FastAPI dependencies) ----------------------------------------------

def api_principal(request: Request) -> Principal:
    who = who_is_asking(request)
    if who is None:
        raise ConsoleError(401, "sign in or send 'Authorization: Bearer <token>'")
    if request.method not in ("GET", "HEAD", "OPTIONS") and not who.via_token:
        # A browser session changing state must prove it came from our own page.
        sent = request.headers.get("x-csrf-token", "")
        if not who.csrf or not same(sent, who.csrf):
            raise ConsoleError(403, "missing or wrong X-CSRF-Token header")
    return who


def viewer(who: Principal = Depends(api_principal)) -> Principal:
    if not who.at_least("viewer"):
        raise ConsoleError(403, f"{who.name} may only post alerts")
    return who


def admin(who: Principal = Depends(api_principal)) -> Principal:
    return admins_only(who)


# ----- the pages' principal and forms -----------------------------------------------------------

def page_principal(request: Request) -> Principal:
    who = who_is_asking(request)
    if who is None or who.via_token or not who.at_least("viewer"):
        raise ConsoleError(401, "sign in first")
    return who


async def checked_form(request: Request, who: Principal) -> dict[str, str]:
    """The posted form, after checking its CSRF token against the session's."""
    return dict(await checked_items(request, who))


async def checked_items(request: Request, who: Principal) -> list[tuple[str, str]]:
    """The posted form's fields in order, a name as often as it was posted, after the CSRF check."""
    form = await request.form()
    sent = str(form.get("csrf", ""))
    if not who.csrf or not same(sent, who.csrf):
        raise ConsoleError(403, "the form's CSRF token is missing or stale: reload the page and try again")
    return [(k, str(v)) for k, v in form.multi_items()]
