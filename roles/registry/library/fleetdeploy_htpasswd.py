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
    again with a new salt. Accounts not in O(users) are removed. The file is replaced atomically, and
    only when its content changes.
  - Needs passlib with a bcrypt backend on the host (Debian's python3-passlib and python3-bcrypt).
options:
  path:
    description: The htpasswd file.
    required: true
    type: path
  users:
    description: The accounts, each C(name) (no colon, no whitespace) and C(password).
    required: true
    type: list
    elements: dict
  cost:
    description: bcrypt's cost (log2 of its rounds), 4 to 31.
    required: true
    type: int
extends_documentation_fragment: [files]
"""

RETURN = r"""
added:
  description: Accounts that had no entry.
  type: list
  returned: always
rehashed:
  description: Accounts whose entry no longer matched their password or the cost.
  type: list
  returned: always
removed:
  description: Entries of accounts no longer listed.
  type: list
  returned: always
"""

import os
import re
import tempfile

from ansible.module_utils.basic import AnsibleModule

try:
    from passlib.hash import bcrypt
except ImportError:  # reported by main() with what to install
    bcrypt = None

_COST = re.compile(r"^\$2[aby]\$(\d\d)\$")


def read_entries(path: str) -> dict[str, str]:
    try:
        with open(path, encoding="utf-8") as source:
            lines = source.read().splitlines()
    except FileNotFoundError:
        return {}
    return dict(line.split(":", 1) for line in lines if ":" in line)


def entry_holds(hashed: str, password: str, cost: int) -> bool:
    found = _COST.match(hashed)
    if not found or int(found.group(1)) != cost:
        return False
    try:
        return bcrypt.verify(password, hashed)
    except ValueError:
        return False


def write_atomically(path: str, content: str) -> None:
    folder = os.path.dirname(path) or "."
    handle, staged = tempfile.mkstemp(dir=folder, prefix=".htpasswd.")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as target:
            target.write(content)
        if os.path.exists(path):
            stat = os.stat(path)
            os.chown(staged, stat.st_uid, stat.st_gid)
            os.chmod(staged, stat.st_mode & 0o7777)
        os.replace(staged, path)
    except BaseException:
        if os.path.exists(staged):
            os.unlink(staged)
        raise


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "users": {"type": "list", "elements": "dict", "required": True, "no_log": True},
            "cost": {"type": "int", "required": True},
        },
        add_file_common_args=True,
        supports_check_mode=True,
    )
    if bcrypt is None:
        module.fail_json(msg="fleetdeploy_htpasswd needs passlib on the host (Debian: python3-passlib, python3-bcrypt)")
    cost = module.params["cost"]
    if not 4 <= cost <= 31:
        module.fail_json(msg=f"cost must be 4 to 31 (bcrypt's range), got {cost}")
    users = module.params["users"]
    names = [str(user.get("name", "")) for user in users]
    bad = [name for name in names if not name or re.search(r"[:\s]", name)]
    if bad or len(set(names)) != len(names) or any(not user.get("password") for user in users):
        module.fail_json(msg="users must each have a unique name without ':' or whitespace and a non-empty password; "
                             f"names: {names}")
    path = module.params["path"]
    existing = read_entries(path)
    result = {"added": [], "rehashed": [], "removed": sorted(set(existing) - set(names))}
    lines = []
    for user in users:
        name, password = user["name"], str(user["password"])
        hashed = existing.get(name)
        if hashed is None or not entry_holds(hashed, password, cost):
            result["added" if hashed is None else "rehashed"].append(name)
            hashed = bcrypt.using(rounds=cost).hash(password)
        lines.append(f"{name}:{hashed}\n")
    changed = bool(result["added"] or result["rehashed"] or result["removed"])
    if changed and not module.check_mode:
        if not os.path.exists(path):
            # Created empty with the asked owner and mode first, so the secret never sits in a wider file.
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            module.set_fs_attributes_if_different(module.load_file_common_arguments(module.params), False)
        write_atomically(path, "".join(lines))
    if os.path.exists(path):
        changed = module.set_fs_attributes_if_different(module.load_file_common_arguments(module.params), changed)
    module.exit_json(changed=changed, path=path, **result)


if __name__ == "__main__":
    main()
