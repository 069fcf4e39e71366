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
  - Returns once every worker nginx had before the reload has exited or says it is shutting down.
    C(systemctl reload) returns as soon as the master is signalled, before it has read the new file and
    told its workers to stop; a drain that started then could take old workers that are still accepting
    requests for idle ones and stop the old container under them.
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
  pid_file:
    description: Where nginx's master writes its process id.
    default: /run/nginx.pid
    type: path
  reload_timeout:
    description: Seconds to wait for the old workers to stop taking requests after the reload; the module
      fails past them (the new upstream may not be in use).
    default: 10
    type: float
"""

RETURN = r"""
reloaded:
  description: Whether nginx was reloaded.
  type: bool
  returned: always
old_workers:
  description: How many workers nginx had before the reload; each has exited or is shutting down.
  type: int
  returned: always
"""

import os
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.fleetdeploy_files import write_file


WORKER = b"nginx: worker process"


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:  # the process has exited, or never was
        return b""


def takes_requests(pid: int | str) -> bool:
    """Whether the process is a worker that takes new requests: one shutting down renames itself."""
    return _read(f"/proc/{pid}/cmdline").rstrip(b"\0 ") == WORKER


def accepting_workers(pid_file: str) -> set[int]:
    """The nginx master's workers that still take new requests (not those shutting down)."""
    master = _read(pid_file).strip()
    # A pid file left by an nginx that is gone may name a process that is not nginx's master now.
    if not master.isdigit() or not _read(f"/proc/{master.decode()}/cmdline").startswith(b"nginx: master process"):
        return set()
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        # /proc/PID/stat: "pid (comm) state ppid ..."; comm may hold spaces, so split after its ")".
        fields = _read(f"/proc/{entry}/stat").rpartition(b")")[2].split()
        if len(fields) > 1 and fields[1] == master and takes_requests(entry):
            found.add(int(entry))
    return found


def wait_replaced(module: AnsibleModule, old: set[int], timeout: float) -> None:
    """Wait until none of `old` still takes requests: each has exited or renamed itself "... is shutting down"."""
    deadline = time.monotonic() + timeout
    while True:
        left = {pid for pid in old if takes_requests(pid)}
        if not left:
            return
        if time.monotonic() >= deadline:
            module.fail_json(msg=f"nginx was reloaded but {len(left)} of its {len(old)} workers still take requests "
                                 f"after {timeout:g} s: the new upstream may not be in use", reloaded=True,
                             old_workers=len(old))
        time.sleep(0.05)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "content": {"type": "str", "required": True},
            "mode": {"type": "str", "default": "0644"},
            "pid_file": {"type": "path", "default": "/run/nginx.pid"},
            "reload_timeout": {"type": "float", "default": 10},
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
        module.exit_json(changed=False, reloaded=False, old_workers=0)
    if module.check_mode:
        module.exit_json(changed=True, reloaded=False, old_workers=0)
    write_file(path, content, mode)
    rc, out, err = module.run_command(["nginx", "-t"])
    if rc != 0:
        if before is None:
            os.unlink(path)
        else:
            write_file(path, before, mode)
        module.fail_json(msg=f"nginx -t refused the new {path}, so it was put back and nginx kept running as it was: "
                             f"{(err or out).strip()}")
    old = accepting_workers(module.params["pid_file"])
    rc, out, err = module.run_command(["systemctl", "reload-or-restart", "nginx"])
    if rc != 0:
        module.fail_json(msg=f"systemctl reload-or-restart nginx failed: {(err or out).strip()}", reloaded=False)
    wait_replaced(module, old, module.params["reload_timeout"])
    module.exit_json(changed=True, reloaded=True, old_workers=len(old))


if __name__ == "__main__":
    main()
