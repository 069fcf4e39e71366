"""Keep the code Python compiles for modules it imports from zip files, for root only.

Ansible runs every module from a zip (its AnsiballZ payload), and Python caches no bytecode for zip
imports, so every module run compiles ansible's module_utils again: about 0.13 s of CPU on the
host, a third of the run. The lab's and Molecule's hosts run thousands of modules; this keeps each
compiled module in a folder only root can write, keyed by a hash of the Python version, the
optimisation level and the source, and gives it the path it was imported from this time, so a
traceback names the file that ran. A `.pth` file imports this at interpreter start; only the name
`fleetdeploy_zipimport_cache` installs the hook, so tests can load it under another name.
"""

from __future__ import annotations

import os
import stat
import sys
import types
import zipimport

CACHE = "/var/cache/fleetdeploy/zipimport"


def usable(cache: str) -> bool:
    """Only for root, and only in a folder nobody else can write: the code in it runs as root."""
    if os.geteuid() != 0:
        return False
    try:
        os.makedirs(cache, mode=0o700, exist_ok=True)
        info = os.lstat(cache)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == 0 and info.st_mode & 0o077 == 0


def refile(code: types.CodeType, filename: str) -> types.CodeType:
    consts = tuple(refile(c, filename) if isinstance(c, types.CodeType) else c for c in code.co_consts)
    return code.replace(co_filename=filename, co_consts=consts)


def install(cache: str = CACHE) -> bool:
    if not usable(cache):
        return False
    compile_source = zipimport._compile_source  # noqa: SLF001 (the one place zipimport compiles)
    salt = b"%s\0%d\0" % (sys.implementation.cache_tag.encode(), sys.flags.optimize)

    def cached_compile_source(pathname: str, source: bytes) -> types.CodeType:
        import hashlib  # here, not at start-up: every Python that root starts loads this file
        import marshal

        path = os.path.join(cache, hashlib.sha256(salt + source).hexdigest())
        try:
            with open(path, "rb") as cached:
                return refile(marshal.load(cached), pathname)
        except (OSError, EOFError, ValueError, TypeError):
            pass  # not cached yet, or unreadable: compile it
        code = compile_source(pathname, source)
        partial = f"{path}.{os.getpid()}"
        try:
            with open(partial, "wb") as out:
                marshal.dump(code, out)
            os.replace(partial, path)  # whole or not at all, for the runs beside this one
        except OSError:
            pass
        return code

    zipimport._compile_source = cached_compile_source  # noqa: SLF001
    return True


if __name__ == "fleetdeploy_zipimport_cache":
    install()
