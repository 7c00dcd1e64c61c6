"""Bucket starts come from sequences kept per zone, period and beginning: whatever was
asked before, a window gets exactly the starts a fresh walk of its zone gives."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dashboard_api.errors import Unprocessable
from dashboard_api.schemas.analytics import Period
from dashboard_api.services.analytics.buckets import bucket_starts
from dashboard_api.services.analytics.layout import epoch_seconds

ZONES = [
    "UTC",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "America/New_York",
    "Australia/Lord_Howe",
    "Pacific/Apia",
    "Europe/London",
    "America/St_Johns",
]


def _walk(tz: ZoneInfo, period: Period, start: datetime) -> Iterator[datetime]:
    """The local period starts from the one holding `start`, hour by hour or day by day."""
    local = start.astimezone(tz)
    if period == "day":
        day, last = local.date(), None
        while True:
            at = datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC)
            if last is None or at > last:
                yield at
                last = at
            day += timedelta(days=1)
    at = local.replace(minute=0, second=0, microsecond=0).astimezone(UTC)
    while True:
        yield at
        nxt = at + timedelta(hours=1)
        loc = nxt.astimezone(tz)
        if loc.minute or loc.second or loc.microsecond:
            back = nxt - timedelta(minutes=loc.minute, seconds=loc.second)
            nxt = back if back > at else back + timedelta(hours=1)
        at = nxt


def _expected(
    tz: ZoneInfo, period: Period, start: datetime, end: datetime, max_buckets: int
) -> tuple[list[datetime], datetime] | None:
    starts: list[datetime] = []
    for at in _walk(tz, period, start):
        if at >= end:
            return starts, at
        if len(starts) == max_buckets:
            return None
        starts.append(at)
    raise AssertionError("unreachable")


PERIODS: list[Period] = ["hour", "day"]
instants = st.datetimes(
    min_value=datetime(2010, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC)
)


@settings(max_examples=60, deadline=None)
@given(
    zone=st.sampled_from(ZONES),
    period=st.sampled_from(PERIODS),
    start=instants,
    lengths=st.lists(st.integers(1, 400 * 24 * 60), min_size=1, max_size=4),
    max_buckets=st.sampled_from([5, 100, 2000]),
)
def test_windows_get_the_starts_of_a_fresh_walk(
    zone: str, period: Period, start: datetime, lengths: list[int], max_buckets: int
) -> None:
    tz = ZoneInfo(zone)
    # Windows from one start with several ends, in any order: the sequence is kept and
    # extended across them.
    for minutes in lengths:
        end = start + timedelta(minutes=minutes)
        want = _expected(tz, period, start, end, max_buckets)
        if want is None:
            with pytest.raises(Unprocessable):
                bucket_starts(tz, period, start, end, max_buckets)
            continue
        got, seconds, last_end = bucket_starts(tz, period, start, end, max_buckets)
        assert (got, last_end) == want
        assert seconds == [epoch_seconds(at) for at in got]


def test_the_limits_of_the_calendar_are_a_422_each_time() -> None:
    tz = ZoneInfo("Pacific/Kiritimati")  # UTC+14: the last local day ends past year 9999
    start = datetime(9999, 12, 30, tzinfo=UTC)
    end = datetime(9999, 12, 31, 23, tzinfo=UTC)
    for _ in range(2):
        with pytest.raises(Unprocessable):
            bucket_starts(tz, "day", start, end, 2000)
