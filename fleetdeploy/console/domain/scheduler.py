"""The thread that launches the schedules (schedule.Schedule) at their minutes.

An admin writes schedules into the configuration (environments.<name>.schedules), so a schedule runs as an
admin of its own environment only, named `schedule:<environment>/<name>`, and goes through the same
checks and the same launch as a person's: its extra vars must pass the action's schema, an approval the
environment asks for is asked for, and it never starts beside another job of its environment (that minute
is skipped, and the audit log says so). A minute the console was down is not made up: like cron.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading

from fleetdeploy.console.domain.errors import ConsoleError
from fleetdeploy.console.domain.launch import Launches
from fleetdeploy.console.schedule import Schedule
from fleetdeploy.console.security import Principal

log = logging.getLogger(__name__)


class Scheduler:
    """A thread that wakes at the start of every minute (UTC) and launches the schedules due then."""

    def __init__(self, console: Launches) -> None:
        self.console = console
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scheduler", daemon=True)

    @property
    def schedules(self) -> list[Schedule]:
        return [s for env in self.console.config.environments.values() for s in env.schedules]

    def start(self) -> None:
        if self.schedules:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        minute = dt.datetime.now(dt.timezone.utc).replace(second=0, microsecond=0)
        while True:
            minute += dt.timedelta(minutes=1)
            wait = (minute - dt.datetime.now(dt.timezone.utc)).total_seconds()
            if self._stop.wait(max(0.0, wait)):
                return
            for schedule in self.schedules:
                if schedule.cron.matches(minute):
                    try:
                        self.fire(schedule)
                    except Exception:  # even its audit entry failed (the database away): the next minute tries again
                        log.exception("schedule %s failed, and so did its audit entry", schedule.actor)
            # A minute that ended during a slow launch is not made up: go on from the present one.
            minute = max(minute, dt.datetime.now(dt.timezone.utc).replace(second=0, microsecond=0))

    def fire(self, schedule: Schedule) -> int | None:
        """Launch the schedule's job now; a refusal (a job running, a bad release) is audited, not raised."""
        who = Principal(schedule.actor, "admin", (schedule.environment,))
        waiting = self.console.open_job_of(schedule.actor, schedule.environment)
        if waiting is not None:  # e.g. one still pending for an approval: never a pile of them
            self.console.record_schedule_skip(schedule, f"its job {waiting} has not ended yet")
            return None
        try:
            request = self.console.validate_launch(who, schedule.environment, schedule.action, schedule.release,
                                                   dict(schedule.extra_vars))
            return self.console.launch(who, request, ip=None)
        except ConsoleError as refused:
            log.warning("schedule %s skipped: %s", schedule.actor, refused.message)
            self.console.record_schedule_skip(schedule, refused.message)
        except Exception:  # one schedule's failure must not stop the others, or the next minute
            log.exception("schedule %s failed", schedule.actor)
            self.console.record_schedule_skip(schedule, "the console failed to launch it (see its log)")
        return None
