"""The docs say only what is true: no placeholder left where text or figures were meant to go."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from helpers import REPO

# Words that mark unfinished text, and filler.
PLACEHOLDER = re.compile(r"\b(TODO|TBD|FIXME|XXX|placeholder|lorem ipsum|coming soon)\b", re.IGNORECASE)
# A line that is one upper-case word and nothing else, as a template's slot left unfilled ("FIGURES").
BARE_SLOT = re.compile(r"^\s*[A-Z][A-Z0-9_]{2,}\s*$")
HEADING = re.compile(r"^(#{1,6})\s")


def docs() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "*.md"], cwd=REPO, capture_output=True, text=True, check=True)
    return [REPO / name for name in listed.stdout.split()]


def prose(path: Path) -> list[tuple[int, str]]:
    """The numbered lines of a Markdown file outside its code blocks, and the blocks' fences."""
    lines, fenced = [], False
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            lines.append((number, "```"))
        elif not fenced:
            lines.append((number, line))
    return lines


def test_the_docs_are_found() -> None:
    names = {p.relative_to(REPO).as_posix() for p in docs()}
    assert {"README.md", "docs/monitoring.md", "roles/nginx/README.md"} <= names


@pytest.mark.parametrize("path", docs(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_no_placeholder_text(path: Path) -> None:
    found = [f"{n}: {line}" for n, line in prose(path) if PLACEHOLDER.search(line) or BARE_SLOT.match(line)]
    assert found == [], f"{path.relative_to(REPO)} has placeholder text"


@pytest.mark.parametrize("path", docs(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_section_has_a_body(path: Path) -> None:
    """A heading followed only by a heading of its level or higher (or by the end) is an empty section."""
    lines = prose(path)
    empty = []
    for i, (number, line) in enumerate(lines):
        heading = HEADING.match(line)
        if not heading:
            continue
        level = len(heading.group(1))
        rest = [text for _, text in lines[i + 1:] if text.strip()]
        following = HEADING.match(rest[0]) if rest else None
        if not rest or (following and len(following.group(1)) <= level):
            empty.append(f"{number}: {line}")
    assert empty == [], f"{path.relative_to(REPO)} has empty sections"
