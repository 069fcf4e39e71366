"""Which releases exist: the tags a Docker registry (HTTP API v2) holds for a repository."""

from __future__ import annotations

import re
import threading
import time

import httpx

from fleetdeploy.console.config import RegistryConfig

_NEXT = re.compile(r'<([^>]+)>;\s*rel="?next"?')
_CACHE_SECONDS = 15.0


class RegistryError(RuntimeError):
    """The registry could not be asked, or refused; the message says which and why."""


class RegistryClient:
    def __init__(self, config: RegistryConfig) -> None:
        self.config = config
        self._cache: dict[str, tuple[float, list[str]]] = {}
        self._lock = threading.Lock()

    def _client(self) -> httpx.Client:
        password = self.config.password()
        auth = (self.config.username, password) if self.config.username and password is not None else None
        verify: str | bool = str(self.config.ca_file) if self.config.ca_file else True
        return httpx.Client(base_url=self.config.url, auth=auth, verify=verify, timeout=self.config.timeout)

    def tags(self, repository: str, fresh: bool = False) -> list[str]:
        """The repository's tags, newest name last as the registry lists them; cached for a few seconds."""
        with self._lock:
            hit = self._cache.get(repository)
            if hit and not fresh and time.monotonic() - hit[0] < _CACHE_SECONDS:
                return list(hit[1])
        tags: list[str] = []
        url: str | None = f"/v2/{repository}/tags/list?n=1000"
        try:
            with self._client() as client:
                while url:
                    resp = client.get(url)
                    if resp.status_code == 401:
                        raise RegistryError(f"registry {self.config.url} refused the credentials (401)")
                    if resp.status_code == 404:
                        raise RegistryError(f"registry {self.config.url} has no repository {repository!r}")
                    resp.raise_for_status()
                    tags += resp.json().get("tags") or []
                    match = _NEXT.search(resp.headers.get("link", ""))
                    url = match.group(1) if match else None
        except httpx.HTTPError as exc:
            raise RegistryError(f"registry {self.config.url} did not answer: {exc}") from exc
        with self._lock:
            self._cache[repository] = (time.monotonic(), tags)
        return list(tags)
