"""Who may do what: password hashing, tokens, roles scoped per environment, login rate limits."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import deque
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


class LoginLimiter:
    """At most `attempts` failed sign-ins per user name, and four times that per client address
    (several people may share a NAT or a proxy), in a sliding window."""

    def __init__(self, attempts: int, window: float) -> None:
        self.attempts = attempts
        self.window = window
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _limit(self, key: str) -> int:
        return self.attempts * 4 if key.startswith("ip:") else self.attempts

    def _recent(self, key: str, now: float) -> deque[float]:
        q = self._failures.setdefault(key, deque())
        while q and now - q[0] > self.window:
            q.popleft()
        return q

    def blocked(self, *keys: str) -> float:
        """Seconds until a sign-in may be tried again; 0 when it may be tried now."""
        now = time.monotonic()
        with self._lock:
            wait = 0.0
            for key in keys:
                q = self._recent(key, now)
                if len(q) >= self._limit(key):
                    wait = max(wait, self.window - (now - q[0]))
            return wait

    def fail(self, *keys: str) -> None:
        now = time.monotonic()
        with self._lock:
            for key in keys:
                self._recent(key, now).append(now)

    def succeed(self, *keys: str) -> None:
        with self._lock:
            for key in keys:
                self._failures.pop(key, None)
