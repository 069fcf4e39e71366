"""The console's layers and the one direction of their imports (docs/console.md, "How the code is laid out").

Every module under fleetdeploy/console is read with ast (nothing is imported), each of its imports of the
console's own modules found (at the top, inside functions, under TYPE_CHECKING alike), and each checked
against the rule: a module imports its own layer and the layers below it, never one above.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "fleetdeploy" / "console"
PACKAGE = "fleetdeploy.console"

# Lowest first. base: what every layer may use (configuration, tables, security primitives, the job
# statuses, redaction, what a schedule is); entry: the command line and the server, which start it all.
LAYERS = ("base", "runner", "domain", "web", "entry")
BASE = {"config", "db", "migrations", "redact", "schedule", "security", "status"}
ENTRY = {"cli", "server"}
# What a layer may not import although it lies below: the web goes through the domain for everything, so it
# neither reaches the runner nor runs SQL.
FORBIDDEN = {"web": ("fleetdeploy.console.runner", "fleetdeploy.console.db", "sqlalchemy")}
# The one module outside the web that builds it: the command line's `serve`.
WEB_STARTER = "fleetdeploy.console.cli"


def modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join((PACKAGE, *parts)), path


def layer_of(module: str) -> str:
    """The layer of a console module; a module in none of them fails: it must be put in one."""
    top = module.removeprefix(PACKAGE).lstrip(".").split(".")[0]
    if top in ("web", "domain", "runner"):
        return top
    if top in BASE or top == "":
        return "base"
    if top in ENTRY:
        return "entry"
    pytest.fail(f"{module} is in no layer: move it into web/, domain/ or runner/, or add it to BASE or ENTRY "
                f"in {Path(__file__).name} (and to docs/console.md)")


def _is_module(name: str) -> bool:
    relative = Path(*name.removeprefix(PACKAGE).lstrip(".").split("."))
    return (ROOT / relative).with_suffix(".py").is_file() or (ROOT / relative / "__init__.py").is_file()


def imports(module: str, path: Path) -> Iterator[tuple[int, str]]:
    """(line, module imported) for every import in the file; `from a import b` names a.b when b is a module."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = module.split(".")
                parent = parent[:len(parent) - node.level + (1 if is_package else 0)]
                base = ".".join(parent + ([base] if base else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                yield node.lineno, candidate if candidate.startswith(PACKAGE) and _is_module(candidate) else base


def edges() -> list[tuple[str, Path, int, str]]:
    """(module, its file, line, console module imported) for every import of the console's own modules."""
    found = []
    for module, path in modules():
        for line, target in imports(module, path):
            found.append((module, path, line, target))
    return found


def violations(found: list[tuple[str, Path, int, str]]) -> list[str]:
    """What breaks the rule among imports (module, its file, line, module imported), one line each."""
    wrong = []
    for module, path, line, target in found:
        mine = layer_of(module)
        where = f"{path.relative_to(ROOT.parents[1])}:{line}: {module} ({mine}) imports {target}"
        for forbidden in FORBIDDEN.get(mine, ()):
            if target == forbidden or target.startswith(forbidden + "."):
                wrong.append(f"{where}, which the {mine} layer may not use: go through the domain")
        if not target.startswith(PACKAGE):
            continue
        theirs = layer_of(target)
        if LAYERS.index(theirs) > LAYERS.index(mine):
            wrong.append(f"{where} ({theirs}): a layer above its own; the rule is "
                         f"{' -> '.join(reversed(LAYERS))} (each imports only what lies to its right)")
        elif theirs == "web" and mine != "web" and module != WEB_STARTER:
            wrong.append(f"{where}: only {WEB_STARTER} starts the web")
    return wrong


def test_every_import_goes_down_the_layers() -> None:
    wrong = violations(edges())
    assert not wrong, "imports against the direction of the layers:\n" + "\n".join(wrong)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph, as the path round it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_cycles_between_layers_or_modules() -> None:
    own = [(m, t) for m, _, _, t in edges() if t.startswith(PACKAGE) and t != m]
    layers: dict[str, set[str]] = {}
    for module, target in own:
        if layer_of(module) != layer_of(target):
            layers.setdefault(layer_of(module), set()).add(layer_of(target))
    assert _cycle(layers) is None, f"the layers import each other: {' -> '.join(_cycle(layers) or [])}"
    graph: dict[str, set[str]] = {}
    for module, target in own:
        # A module's import of its own package's __init__ (empty here) is no dependency on its siblings.
        if not module.startswith(target + "."):
            graph.setdefault(module, set()).add(target)
    cycle = _cycle(graph)
    assert cycle is None, f"modules import each other: {' -> '.join(cycle or [])}"


def test_the_rule_sees_a_wrong_import(tmp_path: Path) -> None:
    """The checks above would see a runner module that imports the web, a route that runs SQL or reaches the
    runner, and the server building the web instead of the command line."""
    runner = ROOT / "runner" / "manager.py"
    found = list(imports("fleetdeploy.console.runner.manager", runner))
    assert "fleetdeploy.console.runner.grid" in {t for _, t in found}, found
    bad = ROOT / "bad.py"  # never written: violations() reads only the names and the path's place
    wrong = violations([
        ("fleetdeploy.console.runner.bad", bad, 1, "fleetdeploy.console.web.deps"),
        ("fleetdeploy.console.web.bad", bad, 2, "sqlalchemy"),
        ("fleetdeploy.console.web.bad", bad, 3, "fleetdeploy.console.db"),
        ("fleetdeploy.console.web.bad", bad, 4, "fleetdeploy.console.runner.live"),
        ("fleetdeploy.console.server", bad, 5, "fleetdeploy.console.web.factory"),
        ("fleetdeploy.console.web.bad", bad, 6, "fleetdeploy.console.domain.reads"),
        ("fleetdeploy.console.cli", bad, 7, "fleetdeploy.console.web.factory"),
    ])
    assert [line.split(":")[1] for line in wrong] == ["1", "2", "3", "4", "5"], wrong
    source = tmp_path / "bad.py"
    source.write_text("from fleetdeploy.console.web import deps\nfrom sqlalchemy import select\n")
    assert [t for _, t in imports("fleetdeploy.console.runner.bad", source)] == ["fleetdeploy.console.web.deps",
                                                                               "sqlalchemy"]
