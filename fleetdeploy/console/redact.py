"""Make an ansible-runner event safe to store and serve.

Three layers, because any one of them can be missed by a playbook author:
1. results of `no_log` tasks are dropped whole (Ansible censors them too; we do not rely on it);
2. values under keys that name a secret (password, token, secret_env, deploy_secrets, ...) are masked
   wherever they appear, every scalar of a mapping or list under such a key too;
3. every literal secret the console knows (the values in the environment's vault files and inline
   `!vault` strings, the vault password, configured extras) is replaced in every string.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MASK = "********"
_SECRET_KEY = re.compile(r"pass(word|wd|phrase)?$|secret|token|private_key|api_key|credential|vault", re.I)
# Keys of an event that carry nothing the console shows and may carry the environment or arguments.
_DROP_KEYS = {"invocation", "env", "environment", "_ansible_verbose_always", "_ansible_verbose_override"}
_INLINE_VAULT = re.compile(r"!vault\s*\|[-+]?\s*\n((?:[ \t]+\S.*\n?)+)")
_MIN_SECRET = 4  # shorter values would mask ordinary words in the log

MAX_STDOUT = 16 * 1024


class Redactor:
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        values = {s for s in secrets if s and len(s) >= _MIN_SECRET}
        # Longest first so a secret that contains another is masked whole.
        self._values = sorted(values, key=len, reverse=True)
        self._pattern = re.compile("|".join(re.escape(v) for v in self._values)) if self._values else None

    @property
    def known(self) -> int:
        return len(self._values)

    def text(self, value: str) -> str:
        return self._pattern.sub(MASK, value) if self._pattern else value

    def value(self, value: Any, key: str | None = None) -> Any:
        if key is not None and _SECRET_KEY.search(key):
            return _masked(value)
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            if value.get("_ansible_no_log"):
                return {"censored": "the output has been hidden due to the fact that 'no_log: true' was specified"}
            return {k: self.value(v, k) for k, v in value.items() if k not in _DROP_KEYS}
        if isinstance(value, (list, tuple)):
            return [self.value(v) for v in value]
        return value


def _masked(value: Any) -> Any:
    """A value under a secret's key: every scalar in it masked, the shape kept."""
    if isinstance(value, dict):
        return {k: _masked(v) for k, v in value.items() if k not in _DROP_KEYS}
    if isinstance(value, (list, tuple)):
        return [_masked(v) for v in value]
    if isinstance(value, (str, int, float)) and value != "":
        return MASK
    return value


def vault_secret_values(paths: Iterable[Path], password: str) -> set[str]:
    """Decrypt every vault file and inline vault string under `paths` and return the secret scalars."""
    from ansible.parsing.vault import VaultLib, VaultSecret  # heavy: imported only when a vault is configured
    import yaml

    vault = VaultLib([("default", VaultSecret(password.encode()))])
    found: set[str] = {password}

    def scalars(data: Any) -> Iterable[str]:
        if isinstance(data, dict):
            for v in data.values():
                yield from scalars(v)
        elif isinstance(data, list):
            for v in data:
                yield from scalars(v)
        elif isinstance(data, (str, int, float)) and not isinstance(data, bool):
            yield str(data)

    for root in paths:
        files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        for path in files:
            if path.suffix not in {"", ".yml", ".yaml", ".json"} or path.stat().st_size > 1024 * 1024:
                continue
            try:
                text = path.read_text()
            except (OSError, UnicodeDecodeError):
                continue
            chunks: list[str] = []
            if text.startswith("$ANSIBLE_VAULT;"):
                chunks.append(text)
            chunks += [re.sub(r"^[ \t]+", "", m.group(1), flags=re.M) for m in _INLINE_VAULT.finditer(text)]
            for chunk in chunks:
                try:
                    plain = vault.decrypt(chunk.strip()).decode()
                except Exception as exc:  # a file for another vault id: nothing we can mask
                    log.warning("could not decrypt a vault value in %s: %s", path, type(exc).__name__)
                    continue
                found.add(plain.strip())
                try:
                    found.update(scalars(yaml.safe_load(plain)))
                except yaml.YAMLError:
                    pass
    return {v for v in found if len(v) >= _MIN_SECRET}
