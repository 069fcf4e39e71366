"""uvicorn, made to stop the console's jobs as soon as SIGTERM or SIGINT arrives.

uvicorn waits for every open response to end before it runs the app's shutdown, and a browser's event
stream ends only with its job: left alone, one watched job kept the server up until systemd's SIGKILL.
So the signal first stops the jobs (marked interrupted, docs/console.md), which ends their streams.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

import uvicorn

# A backstop only: the schedules and jobs stop, and so their streams end, within a second or two of the signal.
GRACEFUL_SECONDS = 10


class StoppingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, stop_console: Callable[[], object]) -> None:
        super().__init__(config)
        self._stop_console = stop_console

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        first = not self.should_exit
        super().handle_exit(sig, frame)
        if first:  # a signal handler must not block: the console stops in a thread while uvicorn closes
            threading.Thread(target=self._stop_console, name="stop-console", daemon=True).start()


def serve(app: Any, stop_console: Callable[[], object], **options: Any) -> None:
    """uvicorn.run(app, **options), with stop_console (Console.stop: the schedules, then the jobs) called on the
    first stop signal."""
    StoppingServer(uvicorn.Config(app, timeout_graceful_shutdown=GRACEFUL_SECONDS, **options), stop_console).run()
