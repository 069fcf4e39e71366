"""A real console for tests: `fleetdeploy-console serve` in a subprocess, and headless Chromium to look at it.

Shared by the console's own tests (fixture playbooks) and the deploy tests (the console driving a lab).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from helpers import free_port

REPO = Path(__file__).resolve().parent.parent
CONSOLE = REPO / ".venv" / "bin" / "fleetdeploy-console"

CHROMIUM = "/usr/bin/chromium"
# Only 127.0.0.1 is reachable here: without these Chromium keeps trying Google's services.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# How long the UI may take to show a state the server reached: generous for a loaded 2-core machine.
UI_TIMEOUT_MS = 90_000


@dataclass
class Server:
    url: str
    config: Path
    root: Path
    log: Path
    proc: subprocess.Popen[bytes]
    started_s: float = 0.0  # from the spawn to the first answer of /healthz
    tokens: dict[str, str] = field(default_factory=dict)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_server(root: Path, config: Path, env: dict[str, str], *serve_args: str, poll: float = 0.1) -> Server:
    """Start `serve` on a free port of 127.0.0.1 and wait until it answers /healthz, polling every `poll` s."""
    port = free_port()
    log = root / "server.log"
    started = time.monotonic()
    proc = subprocess.Popen([str(CONSOLE), "serve", "--config", str(config), "--port", str(port), *serve_args],
                            stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = started + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return Server(url, config, root, log, proc, started_s=time.monotonic() - started)
        except httpx.HTTPError:
            time.sleep(poll)
        assert proc.poll() is None, log.read_text()
    raise AssertionError(f"the console did not start:\n{log.read_text()}")


@contextmanager
def chromium_page(profile_dir: Path) -> Iterator[object]:
    """A Playwright page in Debian's Chromium (installed on first use), with the UI timeout as default."""
    if not os.path.exists(CHROMIUM):
        done = subprocess.run(["bash", str(REPO / "scripts" / "ensure-package.sh"), "chromium", CHROMIUM], capture_output=True, text=True,
                              check=False)
        assert done.returncode == 0, done.stderr
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=UI_TIMEOUT_MS)
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile_dir), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000})
        context.set_default_timeout(UI_TIMEOUT_MS)
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


def sign_in(page: object, url: str, user: str, password: str) -> None:
    from playwright.sync_api import Page, expect

    assert isinstance(page, Page)
    page.context.clear_cookies()
    page.goto(f"{url}/")
    expect(page).to_have_url(re.compile(r"/login"))
    page.fill("input[name=name]", user)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    expect(page.locator("header .whoami")).to_contain_text(user)
