"""Every direct requirement is there for a reason the repository shows: a pin nothing uses is a defect."""

from __future__ import annotations

import re
import subprocess
from importlib import metadata

from helpers import REPO

# Requirements used without an import or a command of their own, each with the text that shows the use.
INDIRECT = {
    "ansible": "community.docker.",  # the collections it bundles, by FQCN
    "molecule-plugins": "name: docker",  # Molecule's docker driver
    "pytest-xdist": "-p xdist",  # pyproject.toml's addopts
    "Jinja2": "Jinja2Templates",  # the console's pages
    "psycopg": "postgresql+psycopg",  # SQLAlchemy's driver for PostgreSQL
    "python-multipart": "request.form()",  # Starlette parses forms with it
}


def requirements() -> list[str]:
    lines = (line.split("#")[0].strip() for line in (REPO / "requirements.txt").read_text().splitlines())
    return [re.split(r"[\[=<>~!]", line)[0] for line in lines if line]


def repository_text() -> str:
    listed = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    skip = {"requirements.txt", "constraints.txt"}
    return "\n".join((REPO / name).read_text(errors="ignore") for name in listed
                     if name not in skip and not name.startswith("services/demo/static") and (REPO / name).is_file())


def test_every_direct_requirement_is_used() -> None:
    text = repository_text()
    unused = []
    for name in requirements():
        if name in INDIRECT:
            if INDIRECT[name] not in text:
                unused.append(f"{name} (no {INDIRECT[name]!r} any more)")
            continue
        dist = metadata.distribution(name)
        modules = set((dist.read_text("top_level.txt") or "").split()) or {
            str(f).split("/")[0].removesuffix(".py") for f in dist.files or []
            if not str(f).startswith("..") and ".dist-info" not in str(f) and "/" in str(f)}
        scripts = {entry.name for entry in dist.entry_points if entry.group == "console_scripts"}
        imported = any(re.search(rf"^\s*(import|from)\s+{re.escape(m)}\b", text, re.M) for m in modules)
        run = any(re.search(rf"(?<![\w-]){re.escape(s)}(?![\w-])", text) for s in scripts)
        if not (imported or run):
            unused.append(name)
    assert unused == [], "pinned in requirements.txt but not used"


def test_constraints_pin_every_direct_requirement() -> None:
    pinned = {line.split("==")[0].split("[")[0].lower() for line in (REPO / "constraints.txt").read_text().splitlines()
              if "==" in line and not line.startswith("#")}
    assert {name.lower() for name in requirements()} <= pinned
