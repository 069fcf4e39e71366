#!/usr/bin/python
"""Ansible module: point nginx at a service's container: write its upstream file, test, reload."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: fleetdeploy_nginx_upstream
short_description: Write an nginx upstream file, test the configuration and reload nginx gracefully
description:
  - Writes O(content) to O(path) (a temporary file in the same folder, renamed), runs C(nginx -t),
    and on success reloads nginx through systemd (starting it if it is not running): new workers take the new upstream, old ones finish
    the requests they hold.
  - If C(nginx -t) fails the file it replaced is put back (or the new one removed), nginx is not
    reloaded, and the module fails with nginx's own message. The running nginx never sees the change.
  - Nothing is written or reloaded when the file already has that content.
  - One module run instead of the four a template, command and systemd_service sequence costs: the
    deploy runs this on every host, and each module run is about a tenth of a second of the host's CPU.
options:
  path:
    description: The upstream file nginx includes.
    required: true
    type: path
  content:
    description: What the file must hold.
    required: true
    type: str
  mode:
    description: The file's permissions.
    default: "0644"
    type: str
"""

RETURN = r"""
reloaded:
  description: Whether nginx was reloaded.
  type: bool
  returned: always
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.fleetdeploy_files import write_file


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "content": {"type": "str", "required": True},
            "mode": {"type": "str", "default": "0644"},
        },
        supports_check_mode=True,
    )
    path, content = module.params["path"], module.params["content"].encode()
    try:
        mode = int(module.params["mode"], 8)
    except ValueError:
        module.fail_json(msg=f"mode must be octal, like 0644, not {module.params['mode']!r}")
    try:
        with open(path, "rb") as handle:
            before: bytes | None = handle.read()
    except FileNotFoundError:
        before = None
    if before == content:
        module.exit_json(changed=False, reloaded=False)
    if module.check_mode:
        module.exit_json(changed=True, reloaded=False)
    write_file(path, content, mode)
    rc, out, err = module.run_command(["nginx", "-t"])
    if rc != 0:
        if before is None:
            os.unlink(path)
        else:
            write_file(path, before, mode)
        module.fail_json(msg=f"nginx -t refused the new {path}, so it was put back and nginx kept running as it was: "
                             f"{(err or out).strip()}")
    rc, out, err = module.run_command(["systemctl", "reload-or-restart", "nginx"])
    if rc != 0:
        module.fail_json(msg=f"systemctl reload-or-restart nginx failed: {(err or out).strip()}", reloaded=False)
    module.exit_json(changed=True, reloaded=True)


if __name__ == "__main__":
    main()
