"""Users and API tokens: the one place they are created, changed, disabled, revoked and listed.

The command line (cli.py), the API (web/api.py) and the pages (web/pages.py) all call these, with the
same rules: nobody grants a role or a scope wider than their own (Principal.why_not_grant), names and
passwords as NAME_RULE and MIN_PASSWORD say, environments written as parse_environments reads them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import delete, select

from fleetdeploy.console.db import ApiToken, User, WebSession, now
from fleetdeploy.console.domain.core import MAX_ID, Core
from fleetdeploy.console.domain.errors import ConsoleError
from fleetdeploy.console.security import (
    MIN_PASSWORD,
    ROLES,
    TOKEN_ROLES,
    Principal,
    hash_password,
    new_token,
    token_digest,
)

# What a user's or a token's name must be (the column holds 64 characters).
NAME_RULE = "a name has 1 to 64 characters and no surrounding spaces"
# The names the console gives its own actors; no user may take one.
RESERVED_PREFIXES = ("schedule:", "token:")


def valid_name(name: str) -> bool:
    return 1 <= len(name) <= 64 and name == name.strip()


def parse_environments(text: str | None) -> list[str] | None:
    """Environments as a person writes them, on the command line or in a form: names separated by commas
    or spaces. None (every environment) when there are none."""
    return [e for e in (text or "").replace(",", " ").split() if e] or None


class Admin(Core):
    """Users and tokens; every method checks that `who` may grant what it asks (Principal.why_not_grant)."""

    def _environments(self, environments: Iterable[str] | None) -> list[str] | None:
        if environments is None:
            return None
        names = list(dict.fromkeys(environments))
        if not names:
            raise ConsoleError(422, "environments: name at least one, or leave them out for every environment")
        unknown = [n for n in names if n not in self.config.environments]
        if unknown:
            raise ConsoleError(422, f"unknown environment(s): {', '.join(unknown)}")
        return names

    @staticmethod
    def _may_grant(who: Principal, role: str, environments: list[str] | None) -> None:
        reason = who.why_not_grant(role, environments)
        if reason:
            raise ConsoleError(403, reason)

    def save_user(self, who: Principal, name: str, role: str, environments: Iterable[str] | None,
                  password: str, ip: str | None = None, update: bool = False) -> User:
        """Create a user (or, with `update`, change its role, scope and password, which ends its sessions; an
        empty password on an update keeps the one it has)."""
        keep_password = update and password == ""
        if name.startswith(RESERVED_PREFIXES):
            raise ConsoleError(422, "a user's name may not start with schedule: or token: (the console's own actors)")
        if not valid_name(name) or role not in ROLES or (
                len(password) < MIN_PASSWORD and not keep_password):
            raise ConsoleError(422, f"a user needs a name, a role ({', '.join(ROLES)}) and a password of at least "
                                    f"{MIN_PASSWORD} characters; {NAME_RULE}")
        envs = self._environments(environments)
        self._may_grant(who, role, envs)
        with self.sessions() as db:
            user = db.scalar(select(User).where(User.name == name))
            if user is not None and not update:
                raise ConsoleError(409, f"user {name} exists")
            if user is None:
                if keep_password:
                    raise ConsoleError(404, f"no user {name}")
                user = User(name=name, disabled=False)
                db.add(user)
            else:
                # Changing a user is managing it: its present scope must be within ours too.
                self._may_grant(who, user.role, user.environments)
                db.execute(delete(WebSession).where(WebSession.user_id == user.id))
            user.role, user.environments = role, envs
            if not keep_password:
                user.password_hash = hash_password(password)
            self.audit(db, who.name, "user_update" if update else "user_create", name, ip=ip, role=role,
                       environments=envs, password_changed=not keep_password)
            db.commit()
            return user

    def set_user_disabled(self, who: Principal, user_id: int, disabled: bool, ip: str | None = None) -> User:
        with self.sessions() as db:
            user = db.get(User, user_id) if 1 <= user_id <= MAX_ID else None
            if user is None:
                raise ConsoleError(404, f"no user {user_id}")
            self._may_grant(who, user.role, user.environments)
            user.disabled = disabled
            if disabled:
                db.execute(delete(WebSession).where(WebSession.user_id == user.id))
            self.audit(db, who.name, "user_disable" if disabled else "user_enable", user.name, ip=ip)
            db.commit()
            return user

    def create_token(self, who: Principal, name: str, role: str, environments: Iterable[str] | None,
                     ip: str | None = None) -> tuple[ApiToken, str]:
        """Create an API token; the token itself is returned here only."""
        if not valid_name(name) or role not in TOKEN_ROLES:
            raise ConsoleError(422, f"a token needs a name and a role ({', '.join(TOKEN_ROLES)}); {NAME_RULE}")
        envs = self._environments(environments)
        self._may_grant(who, role, envs)
        token = new_token()
        with self.sessions() as db:
            row = ApiToken(name=name, token_hash=token_digest(token), prefix=token[:10], role=role,
                           environments=envs, created_by=who.name)
            db.add(row)
            self.audit(db, who.name, "token_create", name, ip=ip, role=role, environments=envs)
            db.commit()
            return row, token

    def revoke_token(self, who: Principal, token_id: int, ip: str | None = None) -> ApiToken:
        """Revoke a token (again is a no-op) and audit it."""
        with self.sessions() as db:
            row = db.get(ApiToken, token_id) if 1 <= token_id <= MAX_ID else None
            if row is None:
                raise ConsoleError(404, f"no token {token_id}")
            self._may_grant(who, row.role, row.environments)
            row.revoked_at = row.revoked_at or now()
            self.audit(db, who.name, "token_revoke", row.name, ip=ip)
            db.commit()
            return row

    def users(self, who: Principal) -> Sequence[User]:
        """Every user, by name, for an admin."""
        admins_only(who)
        with self.sessions() as db:
            return db.scalars(select(User).order_by(User.name)).all()

    def tokens(self, who: Principal) -> Sequence[ApiToken]:
        """Every API token, newest first, for an admin (their hashes only: a token is shown once, when made)."""
        admins_only(who)
        with self.sessions() as db:
            return db.scalars(select(ApiToken).order_by(ApiToken.id.desc())).all()


def admins_only(who: Principal) -> Principal:
    """The principal, when an admin; else a 403. The one admin check of the API, the pages and the domain."""
    if not who.at_least("admin"):
        raise ConsoleError(403, f"{who.name} ({who.role}) is not an admin")
    return who
