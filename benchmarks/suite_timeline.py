"""Where the test suite's time goes: read the timeline a run wrote (FD_TEST_TIMELINE=FILE make test, or
pytest with that variable set; tests/conftest.py writes one line per test phase) and print, as JSON,
each worker's busy time and the scopes (a module, or a Molecule scenario's class) it ran, longest first.
With a second argument, also draw the workers' lanes as an SVG picture.

Usage: .venv/bin/python benchmarks/suite_timeline.py TIMELINE.jsonl [PICTURE.svg]
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from html import escape
from pathlib import Path


def scope_of(test: str) -> str:
    """The unit pytest-xdist's loadscope keeps on one worker: the class when there is one, else the module."""
    parts = test.split("::")
    return "::".join(parts[:2]) if len(parts) > 2 else parts[0]


def summarize(phases: list[dict]) -> dict:
    start = min(p["start"] for p in phases)
    stop = max(p["stop"] for p in phases)
    scopes: dict[tuple[str, str], list[float]] = defaultdict(lambda: [float("inf"), 0.0, 0.0])
    for p in phases:
        scope = scopes[(p["worker"], scope_of(p["test"]))]
        scope[0] = min(scope[0], p["start"])
        scope[1] = max(scope[1], p["stop"])
        scope[2] += p["stop"] - p["start"]
    workers: dict[str, dict] = {}
    for (worker, name), (first, last, busy) in sorted(scopes.items(), key=lambda item: item[1][0]):
        lane = workers.setdefault(worker, {"busy_s": 0.0, "last_stop_s": 0.0, "scopes": []})
        lane["busy_s"] = round(lane["busy_s"] + busy, 1)
        lane["last_stop_s"] = round(max(lane["last_stop_s"], last - start), 1)
        lane["scopes"].append({"scope": name, "start_s": round(first - start, 1), "busy_s": round(busy, 1)})
    return {"wall_s": round(stop - start, 1), "tests": len({p["test"] for p in phases}),
            "failed": sorted({p["test"] for p in phases if p["outcome"] == "failed"}),
            "workers": dict(sorted(workers.items())),
            "longest_scopes": sorted(({"scope": s["scope"], "worker": w, "busy_s": s["busy_s"]}
                                      for w, lane in workers.items() for s in lane["scopes"]),
                                     key=lambda s: -s["busy_s"])[:15]}


def picture(summary: dict) -> str:
    """One lane per worker, a box per scope (its name when the box is wide enough), a minute scale."""
    width, lane_height, left = 1400, 46, 60
    scale = (width - left - 10) / max(summary["wall_s"], 1)
    lanes = list(summary["workers"].items())
    height = 40 + lane_height * len(lanes)
    shapes = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
              f'font-size="10"><rect width="100%" height="100%" fill="white"/>']
    for minute in range(0, int(summary["wall_s"] // 60) + 1, 5):
        x = left + minute * 60 * scale
        shapes.append(f'<line x1="{x:.1f}" y1="20" x2="{x:.1f}" y2="{height}" stroke="#ddd"/>'
                      f'<text x="{x:.1f}" y="14" text-anchor="middle">{minute} min</text>')
    for row, (worker, lane) in enumerate(lanes):
        y = 24 + row * lane_height
        shapes.append(f'<text x="4" y="{y + 24}">{escape(worker)}</text>')
        for i, scope in enumerate(lane["scopes"]):
            x, w = left + scope["start_s"] * scale, max(scope["busy_s"] * scale, 1)
            label = scope["scope"].split("/")[-1].replace("test_converge_idempotence_verify", "")
            shapes.append(f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{lane_height - 8}" '
                          f'fill="{("#8ab", "#bd9")[i % 2]}" stroke="#555"><title>{escape(scope["scope"])} '
                          f'{scope["busy_s"]} s</title></rect>')
            if w > 6 * len(label):
                shapes.append(f'<text x="{x + 3:.1f}" y="{y + 22}">{escape(label)}</text>')
    shapes.append("</svg>")
    return "\n".join(shapes)


def main() -> None:
    lines = Path(sys.argv[1]).read_text(encoding="utf-8").splitlines()
    summary = summarize([json.loads(line) for line in lines if line.strip()])
    if len(sys.argv) > 2:
        Path(sys.argv[2]).write_text(picture(summary), encoding="utf-8")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
