"""The domain as one object: what the API, the pages and the CLI call for anything that decides, reads or stores.

Each area is written in its own module and brought together here:

    auth.py     sign-in, sign-out, who a cookie or a token is
    admin.py    users and API tokens
    launch.py   launch checks, launch, approve, reject, relaunch, cancel
    reads.py    jobs, logs, live events, history, releases, dashboard, audit log
    alerts.py   Alertmanager's webhook

The domain is the only code that decides, and that writes the database, apart from the runner's own job
records (a job's status, its events and the releases its hosts report; runner/manager.py).
"""

from __future__ import annotations

from fleetdeploy.console.config import Config
from fleetdeploy.console.domain.admin import Admin
from fleetdeploy.console.domain.alerts import Alerts
from fleetdeploy.console.domain.auth import Auth
from fleetdeploy.console.domain.launch import Launches
from fleetdeploy.console.domain.scheduler import Scheduler


class Console(Auth, Admin, Launches, Alerts):
    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.scheduler = Scheduler(self)

    def start(self) -> list[int]:
        """At start-up: finish the jobs a previous console left running (their ids are returned: marked
        interrupted), prune old jobs' events, and start the schedules."""
        interrupted = self.jobs.recover()
        self.jobs.prune()
        self.scheduler.start()
        return interrupted

    def stop(self) -> list[int]:
        """Stop the schedules and every running job (their ids are returned: marked interrupted), and end every
        event stream. Called as soon as a stop signal arrives (server.py), and again at shutdown: harmless."""
        self.scheduler.stop()
        return self.jobs.shutdown()
