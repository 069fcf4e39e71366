"""Files the app_release modules write: whole or not at all."""

from __future__ import annotations

import os
import tempfile


def write_file(path: str, content: bytes, mode: int) -> None:
    """Write `content` to a temporary file beside `path` and rename it over `path`: a reader (nginx, a
    scrape, a concurrent plan) sees the old file or the new one, never half of one."""
    descriptor, temporary = tempfile.mkstemp(dir=os.path.dirname(path), prefix=f".{os.path.basename(path)}.")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(content)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
