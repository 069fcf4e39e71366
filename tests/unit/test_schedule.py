"""The console's cron reader (fleetdeploy/console/schedule.py): the fields of crontab(5), checked against
minutes worked out by hand, and bad expressions refused with the field named."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from fleetdeploy.console.schedule import Cron, CronError

UTC = dt.timezone.utc


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize("expression, after, expected", [
    ("* * * * *", "2026-12-04 19:20:30", "2026-12-04 19:21"),
    ("*/15 * * * *", "2026-12-04 19:20:00", "2026-12-04 19:30"),
    ("0 3 * * *", "2026-12-04 19:20:00", "2026-12-05 03:00"),
    ("30 9 * * 1-5", "2026-12-04 19:20:00", "2026-12-07 09:30"),  # Friday evening -> Monday
    ("0 0 1 * *", "2026-12-04 19:20:00", "2027-01-01 00:00"),
    ("0 12 29 2 *", "2026-12-04 00:00:00", "2028-02-29 12:00"),  # the next leap day
    ("5,35 8-9 * * *", "2026-12-04 08:35:00", "2026-12-04 09:05"),
    ("0 0 * * 7", "2026-12-04 00:00:00", "2026-12-06 00:00"),  # 7 is Sunday, as 0
    # Both day fields restricted: either matches (the 13th, or any Friday).
    ("0 0 13 * 5", "2026-12-04 00:00:00", "2026-12-11 00:00"),
    ("0 0 13 * 5", "2026-12-11 00:00:00", "2026-12-13 00:00"),
    # A day field starting with * counts as unrestricted, as in cron: odd days that are Mondays.
    ("0 0 */2 * 1", "2026-12-04 00:00:00", "2026-12-07 00:00"),
])
def test_the_next_minute_is_the_one_worked_out_by_hand(expression: str, after: str, expected: str) -> None:
    cron = Cron.parse(expression)
    found = cron.next_after(at(after))
    assert found == at(expected), (expression, found)
    assert cron.matches(found) and not cron.matches(found - dt.timedelta(minutes=1)) or expression == "* * * * *"


def test_a_date_that_never_comes_has_no_next_minute() -> None:
    assert Cron.parse("0 0 31 2 *").next_after(at("2026-12-04 00:00:00")) is None


@pytest.mark.parametrize("expression, says", [
    ("* * * *", "has 4 fields"),
    ("60 * * * *", "minute '60'"),
    ("* 24 * * *", "hour '24'"),
    ("* * 0 * *", "day of month '0'"),
    ("* * * 13 *", "month '13'"),
    ("* * * * 8", "day of week '8'"),
    ("*/0 * * * *", "minute '*/0'"),
    ("5-1 * * * *", "minute '5-1'"),
    ("x * * * *", "minute 'x' is not a number"),
])
def test_a_bad_expression_is_refused_naming_its_field(expression: str, says: str) -> None:
    with pytest.raises(CronError, match=re.escape(says)):
        Cron.parse(expression)
