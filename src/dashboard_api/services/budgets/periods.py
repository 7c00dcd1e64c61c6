"""Calendar periods in a time zone: local midnight to local midnight, as UTC instants.

A day in a zone that changes offset that night is 23 or 25 hours long; weeks start on
Monday (ISO 8601); a month starts on its first day. In the few zones that move their
clocks at midnight, a day starts at the first instant that exists.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

Period = Literal["day", "week", "month"]


def _local_midnight(day: date, tz: ZoneInfo) -> datetime:
    """The first instant of `day` in `tz`, in UTC. With fold=0 a wall time that a
    spring-forward gap swallows maps to the instant the gap ends, and a repeated one to
    its first occurrence (PEP 495): the day's first instant either way."""
    return datetime(day.year, day.month, day.day, tzinfo=tz).astimezone(UTC)


def _first_day(period: Period, day: date) -> date:
    if period == "day":
        return day
    if period == "week":
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def _next_first_day(period: Period, first: date) -> date:
    if period == "day":
        return first + timedelta(days=1)
    if period == "week":
        return first + timedelta(days=7)
    return (first.replace(day=28) + timedelta(days=4)).replace(day=1)


def period_bounds(period: Period, tz: ZoneInfo, at: datetime) -> tuple[datetime, datetime]:
    """[start, end) in UTC of the period of `tz` that holds the instant `at`."""
    first = _first_day(period, at.astimezone(tz).date())
    start = _local_midnight(first, tz)
    end = _local_midnight(_next_first_day(period, first), tz)
    return start, end
