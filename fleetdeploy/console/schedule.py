"""What a schedule is: an action the configuration launches by itself, at the minutes a cron expression
names (UTC). domain/scheduler.py launches them; this module only reads them (config.load uses it).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

# (name, lowest, highest) of the five fields, in order.
_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12), ("day of week", 0, 7))


class CronError(ValueError):
    """A cron expression that cannot be read; the message says which field and why."""


def _field(text: str, name: str, low: int, high: int) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        base, _, step_text = part.partition("/")
        try:
            step = int(step_text) if step_text else 1
            if base == "*":
                first, last = low, high
            elif "-" in base:
                first, last = (int(n) for n in base.split("-", 1))
            else:
                first = int(base)
                last = high if step_text else first
        except ValueError:
            raise CronError(f"{name} {part!r} is not a number, a range (a-b), * or one of them with /step") from None
        if step < 1 or not low <= first <= last <= high:
            raise CronError(f"{name} {part!r} is outside {low}-{high}, or its range or step is empty")
        values.update(range(first, last + 1, step))
    return frozenset(values)


@dataclass(frozen=True)
class Cron:
    """The five fields of crontab(5): minute hour day-of-month month day-of-week (0 or 7: Sunday). As in
    cron, when both day fields are restricted, a day that matches either one matches."""

    text: str
    minutes: frozenset[int] = field(compare=False)
    hours: frozenset[int] = field(compare=False)
    days: frozenset[int] = field(compare=False)
    months: frozenset[int] = field(compare=False)
    weekdays: frozenset[int] = field(compare=False)
    any_day: bool = field(compare=False)
    any_weekday: bool = field(compare=False)

    @classmethod
    def parse(cls, text: str) -> "Cron":
        parts = text.split()
        if len(parts) != 5:
            raise CronError(f"{text!r} has {len(parts)} fields; a cron expression has five: "
                            "minute hour day-of-month month day-of-week")
        minutes, hours, days, months, weekdays = (_field(p, *f) for p, f in zip(parts, _FIELDS))
        # As cron does, a day field that starts with * (*, */2) counts as unrestricted.
        return cls(text, minutes, hours, days, months, frozenset(d % 7 for d in weekdays),
                   parts[2].startswith("*"), parts[4].startswith("*"))

    def _day(self, when: dt.datetime) -> bool:
        weekday = (when.weekday() + 1) % 7  # cron counts from Sunday
        if self.any_day or self.any_weekday:
            return when.day in self.days and weekday in self.weekdays
        return when.day in self.days or weekday in self.weekdays

    def matches(self, when: dt.datetime) -> bool:
        return (when.minute in self.minutes and when.hour in self.hours and when.month in self.months
                and self._day(when))

    def next_after(self, when: dt.datetime) -> dt.datetime | None:
        """The first minute after `when` that matches, within five years (None: never, as 31 February)."""
        at = when.replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
        end = at + dt.timedelta(days=5 * 366)
        while at < end:
            if at.month not in self.months:
                at = (at.replace(day=1, hour=0, minute=0) + dt.timedelta(days=32)).replace(day=1)
            elif not self._day(at):
                at = at.replace(hour=0, minute=0) + dt.timedelta(days=1)
            elif at.hour not in self.hours:
                at = at.replace(minute=0) + dt.timedelta(hours=1)
            elif at.minute not in self.minutes:
                at += dt.timedelta(minutes=1)
            else:
                return at
        return None


@dataclass(frozen=True)
class Schedule:
    """One entry of environments.<name>.schedules."""

    name: str
    environment: str
    action: str
    cron: Cron
    release: str | None = None
    extra_vars: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def actor(self) -> str:
        return f"schedule:{self.environment}/{self.name}"
