"""Who is asking: sign-in and sign-out of a browser, and the principal a session cookie or an API token is."""

from __future__ import annotations

import datetime as dt
import secrets

from sqlalchemy import delete, select

from fleetdeploy.console.db import ApiToken, User, WebSession, now
from fleetdeploy.console.domain.core import Core
from fleetdeploy.console.domain.errors import ConsoleError
from fleetdeploy.console.security import Principal, login_keys, token_digest, verify_password


class Auth(Core):
    """Sign-in (rate-limited per address and name), sign-out, and the principal behind a request's credentials."""

    def sign_in(self, name: str, password: str, ip: str) -> tuple[str, str]:
        """Check the password; return (cookie value, csrf token). Raises ConsoleError on refusal."""
        keys = login_keys(ip, name)
        wait = self.limiter.blocked(*keys)
        if wait:
            raise ConsoleError(429, f"too many failed sign-ins; try again in {int(wait) + 1} s",
                               retry_after=int(wait) + 1)
        with self.sessions() as db:
            user = db.scalar(select(User).where(User.name == name))
            ok = verify_password(user.password_hash if user else None, password)
            if not ok or user is None or user.disabled:
                self.limiter.fail(*keys)
                self.audit(db, name[:64] or "-", "login_failed", ip=ip)
                db.commit()
                raise ConsoleError(401, "wrong user name or password")
            self.limiter.succeed(*keys)
            cookie, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
            db.add(WebSession(id=token_digest(cookie), user_id=user.id, csrf=csrf,
                              expires_at=now() + dt.timedelta(hours=self.config.session_hours)))
            self.audit(db, user.name, "login", ip=ip)
            db.commit()
            return cookie, csrf

    def sign_out(self, cookie: str, everywhere: bool = False) -> None:
        """End this browser session, or with `everywhere` every session of its user."""
        with self.sessions() as db:
            session = db.get(WebSession, token_digest(cookie))
            if session is None:
                return
            if everywhere:
                db.execute(delete(WebSession).where(WebSession.user_id == session.user_id))
                user = db.get(User, session.user_id)
                self.audit(db, user.name if user else "-", "logout_everywhere")
            else:
                db.delete(session)
            db.commit()

    def principal_from_cookie(self, cookie: str | None) -> Principal | None:
        if not cookie:
            return None
        with self.sessions() as db:
            session = db.get(WebSession, token_digest(cookie))
            if session is None or session.expires_at < now():
                return None
            user = db.get(User, session.user_id)
            if user is None or user.disabled:
                return None
            envs = tuple(user.environments) if user.environments is not None else None
            return Principal(user.name, user.role, envs, csrf=session.csrf)

    def principal_from_token(self, token: str) -> Principal | None:
        with self.sessions() as db:
            row = db.scalar(select(ApiToken).where(ApiToken.token_hash == token_digest(token)))
            if row is None or row.revoked_at is not None:
                return None
            if row.last_used_at is None or now() - row.last_used_at > dt.timedelta(minutes=1):
                row.last_used_at = now()
                db.commit()
            envs = tuple(row.environments) if row.environments is not None else None
            return Principal(f"token:{row.name}", row.role, envs, via_token=True)

    def principal_of(self, token: str | None, cookie: str | None) -> Principal | None:
        """Who a bearer token, else a session cookie, belongs to now; None when neither is valid."""
        if token is not None:
            return self.principal_from_token(token)
        return self.principal_from_cookie(cookie)
