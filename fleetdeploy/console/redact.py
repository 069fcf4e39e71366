"""Make an ansible-runner event safe to store and serve.

Three layers, because any one of them can be missed by a playbook author:
1. results of `no_log` tasks are dropped whole (Ansible censors them too; we do not rely on it);
2. values under keys that name a secret (password, token, secret_env, deploy_secrets, ...) are masked
   wherever they appear, every scalar of a mapping or list under such a key too;
3. every literal secret the console knows (the values in the project's and the inventory's vault files
   and inline `!vault` strings, the vault password, configured extras, the job's secret extra vars) is
   replaced in every string. fleetdeploy.console.runner.playbook refuses any vault value beyond those.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MASK = "********"
SECRET_KEY = re.compile(r"pass(word|wd|phrase)?$|secret|token|private_key|api_key|credential|vault", re.I)
# Keys of an event that carry nothing the console shows and may carry the environment or arguments.
_DROP_KEYS = {"invocation", "env", "environment", "_ansible_verbose_always", "_ansible_verbose_override"}
_INLINE_VAULT = re.compile(r"!vault\s*\|[-+]?\s*\n((?:[ \t]+\S.*\n?)+)")
_MIN_SECRET = 4  # shorter values would mask ordinary words in the log
_MAX_VAULT_FILE = 4 * 1024 * 1024

MAX_STDOUT = 16 * 1024


class Redactor:
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        values = {s for s in secrets if s and len(s) >= _MIN_SECRET}
        # Longest first so a secret that contains another is masked whole.
        self._values = sorted(values, key=len, reverse=True)
        self._pattern = re.compile("|".join(re.escape(v) for v in self._values)) if self._values else None

    def extended(self, secrets: Iterable[str]) -> "Redactor":
        """This redactor and some more values (a job's secret extra vars)."""
        return Redactor([*self._values, *secrets])

    @property
    def known(self) -> int:
        return len(self._values)

    def text(self, value: str) -> str:
        return self._pattern.sub(MASK, value) if self._pattern else value

    def value(self, value: Any, key: str | None = None) -> Any:
        if key is not None and secret_key(key):
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


@functools.lru_cache(maxsize=4096)
def secret_key(key: str) -> bool:
    """Whether a key names a secret. Cached: every event repeats the same few dozen keys, and this runs on each."""
    return SECRET_KEY.search(key) is not None


def _masked(value: Any) -> Any:
    """A value under a secret's key: every scalar in it masked, the shape kept."""
    if isinstance(value, dict):
        return {k: _masked(v) for k, v in value.items() if k not in _DROP_KEYS}
    if isinstance(value, (list, tuple)):
        return [_masked(v) for v in value]
    if isinstance(value, (str, int, float)) and value != "":
        return MASK
    return value


def scalars(data: Any) -> Iterable[str]:
    """Every string, number or leaf of a value, as text (booleans are no secret)."""
    if isinstance(data, dict):
        for v in data.values():
            yield from scalars(v)
    elif isinstance(data, (list, tuple)):
        for v in data:
            yield from scalars(v)
    elif isinstance(data, (str, int, float)) and not isinstance(data, bool):
        yield str(data)


@dataclass
class VaultFindings:
    """What the vaulted files and inline strings under some folders hold once decrypted."""

    # The secret scalars to mask (and the vault password itself).
    values: set[str] = field(default_factory=set)
    # Each decrypted plaintext whole, exactly as Ansible decrypts it: what the vault guard compares against.
    plaintexts: set[bytes] = field(default_factory=set)
    # Files whose vault values could not be decrypted with the console's password (another vault id).
    undecryptable: list[Path] = field(default_factory=list)


def walk_files(roots: Iterable[Path], skip: Iterable[Path] = ()) -> list[Path]:
    """Every file under `roots` (files are taken as they are), leaving out hidden folders and `skip`."""
    skipped = {p.resolve() for p in skip}
    seen: set[Path] = set()
    out: list[Path] = []
    for root in roots:
        if root.is_file():
            candidates = [root]
        else:
            candidates = []
            for folder, dirs, files in os.walk(root):
                dirs[:] = [d for d in dirs if not d.startswith(".") and Path(folder, d).resolve() not in skipped]
                candidates += [Path(folder, f) for f in files]
        for path in candidates:
            real = path.resolve()
            if real not in seen and real.is_file():
                seen.add(real)
                out.append(path)
    return out


def vault_secrets(paths: Iterable[Path], password: str, skip: Iterable[Path] = ()) -> VaultFindings:
    """Decrypt every vault file and inline vault string under `paths`: the secret scalars and the plaintexts."""
    from ansible.parsing.vault import VaultLib, VaultSecret  # heavy: imported only when a vault is configured
    import yaml

    vault = VaultLib([("default", VaultSecret(password.encode()))])
    found = VaultFindings(values={password})
    for path in walk_files(paths, skip):
        try:
            if path.stat().st_size > _MAX_VAULT_FILE:
                continue
            raw = path.read_bytes()
        except OSError:
            continue
        chunks: list[bytes] = []
        if raw.startswith(b"$ANSIBLE_VAULT;"):
            chunks.append(raw)  # any file: a vaulted key or certificate is copied with `decrypt: true`
        elif b"!vault" in raw:
            text = raw.decode(errors="replace")
            chunks += [re.sub(r"^[ \t]+", "", m.group(1), flags=re.M).encode() for m in _INLINE_VAULT.finditer(text)]
        for chunk in chunks:
            try:
                plain = vault.decrypt(chunk.strip())
            except Exception as exc:  # a file for another vault id: nothing we can mask
                log.warning("could not decrypt a vault value in %s: %s", path, type(exc).__name__)
                found.undecryptable.append(path)
                continue
            found.plaintexts.add(bytes(plain))
            try:
                text = plain.decode()
            except UnicodeDecodeError:
                continue  # binary: the guard knows it, there is no text to mask
            found.values.add(text.strip())
            try:
                found.values.update(scalars(yaml.safe_load(text)))
            except yaml.YAMLError:
                pass
    found.values = {v for v in found.values if len(v) >= _MIN_SECRET}
    return found


def secret_extra_vars(extra_vars: dict[str, Any], schema: dict[str, Any]) -> set[str]:
    """Names of the extra vars that hold a secret: a name like a password's or token's, or `writeOnly` in the schema."""
    props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
    return {k for k in extra_vars
            if secret_key(k) or (isinstance(props.get(k), dict) and props[k].get("writeOnly") is True)}
