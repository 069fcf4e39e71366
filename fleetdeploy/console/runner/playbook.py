"""`ansible-playbook` as the console runs it: with the vault guard in place before anything is decrypted.

The console masks every secret it finds in the project's and the inventory's vaulted files before it
stores or streams an event (redact.vault_secrets). A vaulted file it cannot see (an absolute `vars_files`
path, a file outside the project) would reach the log in clear. So each job runs `python -m
fleetdeploy.console.runner.playbook ARGS...` instead of `ansible-playbook ARGS...`: this wraps Ansible's vault
decryption, and a plaintext that is not one the console decrypted itself makes the decryption fail, so
the play fails before the value is used. The guard must be in place before Ansible loads the playbook
(resolving `roles:` already reads `vars_files`), which is why it is a wrapper and not a callback plugin.

The wrapper also prints, as each play starts, the hosts it will run on (all its `serial` batches) on one
line the console reads off the output and does not show (HOSTS_PREFIX): the grid lists them as pending.
Ansible has just worked the list out to make the batches, so this costs nothing, where a second
`ansible-playbook --list-hosts` beside the job cost a whole Ansible start and parse of CPU.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

# Names the file of the digests the console knows: the salt (hex) on the first line, then one hex
# SHA-256 of salt + plaintext per line. 0600, in the job's run directory, removed when the job ends.
KNOWN_ENV = "FLEETDEPLOY_CONSOLE_VAULT_KNOWN"
# Starts the line with a play's hosts, a JSON list after it (see announce_play_hosts).
HOSTS_PREFIX = "fleetdeploy-console-hosts: "


def write_known(path: Path, plaintexts: set[bytes]) -> None:
    """The console's side: the salted digests of the vault plaintexts its redactor knows."""
    salt = os.urandom(16)
    lines = [salt.hex(), *sorted(hashlib.sha256(salt + p).hexdigest() for p in plaintexts), ""]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(lines))


def install_vault_guard(known_file: Path) -> None:
    """Make Ansible refuse to decrypt any vault value whose plaintext is not listed in `known_file`."""
    from ansible.errors import AnsibleError
    from ansible.parsing.vault import VaultLib

    salt, *digests = known_file.read_text().split()
    known = frozenset(digests)
    salt_bytes = bytes.fromhex(salt)
    original = VaultLib.decrypt_and_get_vault_id  # every decryption (files, inline strings, filters) comes here

    def guarded(self: VaultLib, vaulttext: Any) -> Any:
        plaintext, vault_id, secret = original(self, vaulttext)
        if hashlib.sha256(salt_bytes + bytes(plaintext)).hexdigest() not in known:
            raise AnsibleError(
                f"fleetdeploy console: the vault value in {_where(vaulttext)} is not in the project or the "
                "inventory, so the console could not mask it in the job's log; it refuses to decrypt it. Move the "
                "vaulted file into the project (or the inventory) the console runs from.", obj=vaulttext)
        return plaintext, vault_id, secret

    VaultLib.decrypt_and_get_vault_id = guarded  # type: ignore[method-assign]


def announce_play_hosts() -> None:
    """Print each play's hosts, all its batches, on one HOSTS_PREFIX line as the play starts."""
    from ansible.executor.playbook_executor import PlaybookExecutor
    from ansible.utils.display import Display

    original = PlaybookExecutor._get_serialized_batches  # called once per play, before its first batch starts
    display = Display()

    def announced(self: PlaybookExecutor, play: Any) -> Any:
        batches = original(self, play)
        display.display(HOSTS_PREFIX + json.dumps([host.name for batch in batches for host in batch]))
        return batches

    PlaybookExecutor._get_serialized_batches = announced  # type: ignore[method-assign]


def _where(vaulttext: Any) -> str:
    """The file (and line) the vault text came from, as Ansible tagged it."""
    try:
        from ansible._internal._datatag._tags import Origin  # ansible-core 2.19's data tagging

        origin = Origin.get_tag(vaulttext)
    except (ImportError, AttributeError):
        origin = None
    return str(origin) if origin else "an unknown file"


def main() -> None:
    known = os.environ.pop(KNOWN_ENV, None)
    if known:
        install_vault_guard(Path(known))
    announce_play_hosts()
    sys.argv[0] = "ansible-playbook"
    from ansible.cli.playbook import main as ansible_playbook

    ansible_playbook()


if __name__ == "__main__":
    main()
