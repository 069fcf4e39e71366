"""Build time and size of each service image, built as the tests and the build playbook build it (the
lab's Debian 12 host image as BASE_IMAGE, the build context of services/testing.build_context: the
service's folder, services/shared/ as shared/, the build host's extra CAs). Prints JSON.

Per service: a cold build (--no-cache: apt and PyPI downloads included), the same build again (every
layer cached), the same sources as a new release (RELEASE changes: every layer above its ARG is
reused: a release that leaves this service's sources unchanged), and a new release after a change of
the service's code only (the packages' layers stay cached). The release names are new at each run, as
the engine keeps the layers of earlier runs. Images are tagged fdbench-services/<name>:*
and untagged at the end; their layers stay in the engine's cache.
Usage: .venv/bin/python benchmarks/service_images.py [service ...]   (default: every services/*/Dockerfile)
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "services"), str(REPO / "tests")]  # testing, and the helpers it imports

from testing import HOST_IMAGE as BASE_IMAGE  # noqa: E402
from testing import build_context  # noqa: E402


def build(context: Path, tag: str, release: str, *extra: str) -> float:
    started = time.monotonic()
    subprocess.run(["docker", "build", "-q", *extra, "-t", tag, "--build-arg", f"BASE_IMAGE={BASE_IMAGE}",
                    "--build-arg", f"RELEASE={release}", str(context)], check=True, capture_output=True, text=True)
    return round(time.monotonic() - started, 1)


def size_mb(image: str) -> float:
    out = subprocess.run(["docker", "image", "inspect", "-f", "{{.Size}}", image], check=True, capture_output=True,
                         text=True).stdout
    return round(int(out) / 1e6, 1)


def measure(service: str) -> dict[str, object]:
    tag = f"fdbench-services/{service}:bench"
    with tempfile.TemporaryDirectory(prefix=f"fdbench-{service}-") as folder:
        context = Path(folder)
        build_context(service, context)  # the build context the tests and the build playbook use
        run = time.time_ns()
        cold = build(context, tag, f"bench-{run}-1", "--no-cache")
        cached = build(context, tag, f"bench-{run}-1")
        new_release = build(context, tag, f"bench-{run}-2")
        package = context / service
        if package.is_dir():  # a code change: one more module in the service's package
            (package / "_bench_change.py").write_text(f"CHANGED = {time.time()!r}\n")
        code_change = build(context, tag, f"bench-{run}-3")
        figures = {"service": service, "cold_build_s": cold, "cached_build_s": cached,
                   "new_release_build_s": new_release, "code_change_build_s": code_change, "image_mb": size_mb(tag),
                   "base_image_mb": size_mb(BASE_IMAGE)}
    figures["added_to_base_mb"] = round(float(figures["image_mb"]) - float(figures["base_image_mb"]), 1)  # type: ignore[arg-type]
    subprocess.run(["docker", "rmi", tag], capture_output=True, check=False)
    return figures


def main() -> None:
    services = sys.argv[1:] or sorted(p.parent.name for p in (REPO / "services").glob("*/Dockerfile"))
    load = Path("/proc/loadavg").read_text().split()[0]
    print(json.dumps({"load_average_at_start": float(load), "services": [measure(s) for s in services]}, indent=2))


if __name__ == "__main__":
    main()
