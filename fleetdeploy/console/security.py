"""Who may do what: password hashing, tokens, roles scoped per environment, login rate limits."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

# Ordered: each role can do what the roles before it can. "alertmanager" is for the webhook only.
ROLES = ("viewer", "deployer", "admin")
TOKEN_ROLES = (*ROLES, "alertmanager")
_LEVEL = {"alertmanager": -1, "viewer": 0, "deployer": 1, "admin": 2}

_hasher = PasswordHasher()
_dummy: list[str] = []


def _dummy_hash() -> str:
    """Verifying against this when the user does not exist keeps the timing of both failures alike."""
    if not _dummy:
        _dummy.append(_hasher.hash(secrets.token_hex(16)))
    return _dummy[0]

TOKEN_PREFIX = "fdc_"
MIN_PASSWORD = 12


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored: str | None, password: str) -> bool:
    try:
        return _hasher.verify(stored or _dummy_hash(), password) and stored is not None
    except (VerificationError, InvalidHashError):
        return False


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


@dataclass(frozen=True)
class Principal:
    """A signed-in user or an API token, with the role and environments it may act on."""

    name: str
    role: str
    environments: tuple[str, ...] | None  # None: all environments
    via_token: bool = False
    csrf: str | None = None

    def at_least(self, role: str) -> bool:
        return _LEVEL[self.role] >= _LEVEL[role]

    def sees(self, environment: str) -> bool:
        return self.at_least("viewer") and (self.environments is None or environment in self.environments)

    def may(self, role: str, environment: str | None = None) -> bool:
        """True when this principal has `role` or better, on `environment` if one is named."""
        if not self.at_least(role):
            return False
        return environment is None or self.environments is None or environment in self.environments

    def covers(self, environments: Iterable[str] | None) -> bool:
        """True when `environments` (None: every one) lies within this principal's own scope."""
        if self.environments is None:
            return True
        return environments is not None and set(environments) <= set(self.environments)

    def why_not_grant(self, role: str, environments: Iterable[str] | None) -> str | None:
        """Why this principal may not create (or change, or disable) a user or token of `role` on
        `environments`, or None when it may. The one rule every front end goes through: nobody grants
        a role or a scope wider than their own, and only an unscoped admin manages unscoped principals."""
        if not self.at_least("admin"):
            return f"{self.name} ({self.role}) is not an admin"
        envs = None if environments is None else sorted(environments)
        if role == "alertmanager" and self.environments is not None:
            return f"{self.name} is scoped to {', '.join(self.environments)}; an alertmanager token posts alerts " \
                   "for every environment, so only an admin of every environment may create one"
        if role != "alertmanager" and _LEVEL[role] > _LEVEL[self.role]:
            return f"{self.name} ({self.role}) may not grant the role {role}"
        if not self.covers(envs):
            mine = ", ".join(self.environments or ())
            theirs = "every environment" if envs is None else ", ".join(envs)
            return f"{self.name} is scoped to {mine} and may not grant or manage {theirs}"
        return None


# Who the command line acts as: it is run by root (or the service's user) on the console's host,
# which owns the database anyway, so it is an admin of every environment.
CLI_PRINCIPAL = Principal("cli", "admin", None)


def login_keys(ip: str, name: str) -> tuple[str, str]:
    """What a failed sign-in counts against: the client address, and the address with the user name.
    Not the name alone: then anyone could lock anyone out."""
    return f"ip:{ip}", f"pair:{ip}|{name.lower()}"


class LoginLimiter:
    """At most `attempts` failed sign-ins per address and user name, and four times that per client
    address (several people may share a NAT or a proxy), in a sliding window.

    Memory is bounded: at most `max_keys` keys are remembered; beyond that the ones whose last failure
    is oldest are forgotten, and a key with no failure left in the window is dropped."""

    def __init__(self, attempts: int, window: float, max_keys: int = 10_000) -> None:
        self.attempts = attempts
        self.window = window
        self.max_keys = max_keys
        # Ordered by last failure, oldest first.
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._failures)

    def _limit(self, key: str) -> int:
        return self.attempts * 4 if key.startswith("ip:") else self.attempts

    def _recent(self, key: str, now: float) -> deque[float] | None:
        q = self._failures.get(key)
        if q is None:
            return None
        while q and now - q[0] > self.window:
            q.popleft()
        if not q:
            del self._failures[key]
            return None
        return q

    def blocked(self, *keys: str) -> float:
        """Seconds until a sign-in may be tried again; 0 when it may be tried now."""
        now = time.monotonic()
        with self._lock:
            wait = 0.0
            for key in keys:
                q = self._recent(key, now)
                if q is not None and len(q) >= self._limit(key):
                    wait = max(wait, self.window - (now - q[0]))
            return wait

    def fail(self, *keys: str) -> None:
        now = time.monotonic()
        with self._lock:
            for key in keys:
                q = self._recent(key, now)
                if q is None:
                    q = self._failures[key] = deque(maxlen=self._limit(key))
                q.append(now)
                self._failures.move_to_end(key)
            # Forget the stalest keys first: expired ones, then the least recently failed.
            while len(self._failures) > self.max_keys:
                self._failures.popitem(last=False)

    def succeed(self, *keys: str) -> None:
        with self._lock:
            for key in keys:
                self._failures.pop(key, None)
