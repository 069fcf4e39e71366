#!/usr/bin/python
"""Ansible module: the registry's htpasswd file, every account a bcrypt entry of one chosen cost."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: fleetdeploy_htpasswd
short_description: Write an htpasswd file of bcrypt entries of one cost, exactly the accounts given
description:
  - Docker distribution checks the Basic credentials of every API request against the file's bcrypt hash,
    so the hash's cost is paid on every request of every pull and push, not once per login
    (roles/registry/README.md says what that costs).
  - An entry is kept when its password still matches and its cost is O(cost); otherwise it is hashed
    again with a new salt. Accounts not in O(users) are removed, and so is any other line. The file is
    replaced atomically, and only when its text changes.
  - Needs the bcrypt library on the host (Debian's python3-bcrypt).
options:
  path:
    description: The htpasswd file.
    required: true
    type: path
  users:
    description: The accounts, in the order they are written.
    required: true
    type: list
    elements: dict
    suboptions:
      name:
        description: Account name, without colon or whitespace, each once.
        required: true
        type: str
      password:
        description: The account's password.
        required: true
        type: str
  cost:
    description: bcrypt's cost (log2 of its rounds), 4 to 31.
    required: true
    type: int
extends_documentation_fragment: [files]
"""

EXAMPLES = r"""
- name: Write the registry's accounts
  fleetdeploy_htpasswd:
    path: /etc/docker/registry/htpasswd
    users: "{{ registry_users }}"
    cost: 6
    owner: root
    group: docker-registry
    mode: "0640"
  no_log: true
"""

RETURN = r"""
path:
  description: The htpasswd file.
  type: str
  returned: always
added:
  description: Accounts that had no entry.
  type: list
  elements: str
  returned: always
rehashed:
  description: Accounts whose entry no longer matched their password or the cost.
  type: list
  elements: str
  returned: always
removed:
  description: Entries of accounts no longer listed.
  type: list
  elements: str
  returned: always
"""

import os
import re
import tempfile

from ansible.module_utils.basic import AnsibleModule

try:
    import bcrypt
except ImportError:  # reported by main() with what to install
    bcrypt = None

_ENTRY = re.compile(r"^([^:\s]+):(\$2[aby]\$(\d\d)\$.{53})$")


def read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as source:
            return source.read()
    except FileNotFoundError:
        return ""


def entries(text: str) -> dict[str, tuple[str, int]]:
    """name -> (hash, cost) of every well-formed bcrypt line; any other line is dropped by the rewrite."""
    found = {}
    for line in text.splitlines():
        match = _ENTRY.match(line)
        if match:
            found.setdefault(match.group(1), (match.group(2), int(match.group(3))))
    return found


def entry_holds(hashed: str, entry_cost: int, password: str, cost: int) -> bool:
    if entry_cost != cost:
        return False
    try:
        return bcrypt.checkpw(password.encode(), hashed.encode())
    except ValueError:
        return False


def plan(text: str, users: list[dict[str, str]], cost: int) -> tuple[str, dict[str, list[str]]]:
    """The file's new text and what changed: accounts added, rehashed and removed."""
    existing = entries(text)
    names = [user["name"] for user in users]
    result: dict[str, list[str]] = {"added": [], "rehashed": [], "removed": sorted(set(existing) - set(names))}
    lines = []
    for user in users:
        name, password = user["name"], user["password"]
        hashed, entry_cost = existing.get(name, ("", 0))
        if not hashed or not entry_holds(hashed, entry_cost, password, cost):
            result["rehashed" if hashed else "added"].append(name)
            hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=cost, prefix=b"2b")).decode()
        lines.append(f"{name}:{hashed}\n")
    return "".join(lines), result


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "users": {"type": "list", "elements": "dict", "required": True, "options": {
                "name": {"type": "str", "required": True},
                "password": {"type": "str", "required": True, "no_log": True},
            }},
            "cost": {"type": "int", "required": True},
        },
        add_file_common_args=True,
        supports_check_mode=True,
    )
    if bcrypt is None:
        module.fail_json(msg="fleetdeploy_htpasswd needs the bcrypt library on the host (Debian: python3-bcrypt)")
    cost, users, path = module.params["cost"], module.params["users"], module.params["path"]
    if not 4 <= cost <= 31:
        module.fail_json(msg=f"cost must be 4 to 31 (bcrypt's range), got {cost}")
    names = [user["name"] for user in users]
    if not users or any(not name or re.search(r"[:\s]", name) for name in names) or len(set(names)) != len(names) \
            or any(not user["password"] for user in users):
        module.fail_json(msg="users must each have a unique name without ':' or whitespace and a non-empty password; "
                             f"names: {names}")
    current = read_text(path)
    text, result = plan(current, users, cost)
    changed = text != current or not os.path.exists(path)
    if changed and not module.check_mode:
        # atomic_move gives the new text the old file's owner and mode, or the umask's to a new file: a new
        # file is made empty first, with its final owner and mode, and the text staged 0600 (mkstemp), so the
        # hashes are never in a file wider than asked.
        if not os.path.exists(path):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            module.set_fs_attributes_if_different(module.load_file_common_arguments(module.params), True)
        handle, staged = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".htpasswd.")
        with os.fdopen(handle, "w", encoding="utf-8") as target:
            target.write(text)
        module.atomic_move(staged, path)
    if os.path.exists(path):
        changed = module.set_fs_attributes_if_different(module.load_file_common_arguments(module.params), changed)
    module.exit_json(changed=changed, path=path, **result)


if __name__ == "__main__":
    main()
