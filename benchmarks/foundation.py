"""Time the foundation: venv, engine, host image build, lab up; fresh and cached. Prints JSON.

Fresh figures use throw-away names (a venv in a temporary folder, image repositories fdbench/*,
a lab named fdbench) so your own caches and lab are never touched; everything is removed afterwards.
Usage: .venv/bin/python benchmarks/foundation.py [--skip-venv]
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from helpers import playbook  # noqa: E402


def timed(func) -> tuple[float, object]:
    started = time.monotonic()
    value = func()
    return round(time.monotonic() - started, 1), value


def venv_times() -> dict[str, float]:
    folder = Path(tempfile.mkdtemp(prefix="fdbench-venv-"))
    try:
        for name in ("requirements.txt", "constraints.txt", "pyproject.toml", "README.md"):
            shutil.copy(REPO / name, folder / name)
        shutil.copytree(REPO / "scripts", folder / "scripts")
        shutil.copytree(REPO / "fleetdeploy", folder / "fleetdeploy")
        run = lambda: subprocess.run(["bash", "scripts/setup-venv.sh"], cwd=folder, check=True, capture_output=True)  # noqa: E731
        fresh, _ = timed(run)
        cached, _ = timed(run)
        return {"venv_fresh_s": fresh, "venv_cached_s": cached}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def engine_time() -> dict[str, object]:
    seconds, result = timed(lambda: subprocess.run(["bash", "scripts/ensure-engine.sh"], cwd=REPO,
                                                   capture_output=True, text=True, check=True))
    already = "already answers" in result.stderr
    return {"engine_s": seconds, "engine_was_running": already}


def image_times() -> dict[str, float]:
    names = {"lab_image_repository": "fdbench/host", "lab_image_base_repository": "fdbench/base",
             "lab_image_work_dir": str(REPO / ".lab" / "fdbench-images"), "lab_image_names": ["debian12"]}
    try:
        fresh, _ = timed(lambda: playbook("playbooks/lab_image.yml", extra_vars=names).check())
        cached, _ = timed(lambda: playbook("playbooks/lab_image.yml", extra_vars=names).check())
        return {"host_image_fresh_s": fresh, "host_image_cached_s": cached}
    finally:
        subprocess.run(["docker", "rmi", "-f", "fdbench/host:debian12", "fdbench/base:debian12"], capture_output=True)
        shutil.rmtree(REPO / ".lab" / "fdbench-images", ignore_errors=True)


def lab_times() -> dict[str, float]:
    folder = Path(tempfile.mkdtemp(prefix="fdbench-lab-"))
    lab = {"lab_name": "fdbench", "lab_app_hosts": 3, "lab_ssh_port_base": 2500, "lab_http_port": 38080,
           "lab_https_port": 38443, "lab_prometheus_port": 39090, "lab_alertmanager_port": 39093,
           "lab_registry_port": 35443, "lab_state_dir": str(folder / "state"),
           "lab_inventory_file": str(folder / "hosts.yml")}
    try:
        fresh, _ = timed(lambda: playbook("playbooks/lab.yml", extra_vars=lab).check())
        cached, _ = timed(lambda: playbook("playbooks/lab.yml", extra_vars=lab).check())
        return {"lab_up_3_app_hosts_fresh_s": fresh, "lab_up_3_app_hosts_again_s": cached}
    finally:
        playbook("playbooks/lab_destroy.yml", extra_vars=lab)
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    figures: dict[str, object] = {}
    if "--skip-venv" not in sys.argv:
        figures.update(venv_times())
    figures.update(engine_time())
    figures.update(image_times())
    figures.update(lab_times())
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
