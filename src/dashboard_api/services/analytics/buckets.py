"""A histogram's buckets: the starts of the local hours or days of a time zone in a window.

Walking a zone's hours costs a conversion per bucket (720 for 30 days by hour, more than
the query), and a moving window ("the last 30 days", asked again and again) meets the
same ones each time. The starts are a sequence that depends only on where it begins (the
local hour or day holding the window's start): each sequence is kept (bounded) and
extended on demand, and a window takes the prefix of it before its end.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dashboard_api.bounded import BoundedCache
from dashboard_api.errors import Unprocessable
from dashboard_api.schemas.analytics import Period
from dashboard_api.services.analytics.layout import epoch_seconds


def parse_tz(name: str) -> ZoneInfo:
    """The IANA zone, or 422."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise Unprocessable(f"Unknown time zone {name!r}.", loc=["query", "tz"]) from None


def _day_starts(tz: ZoneInfo, day: date) -> Iterator[datetime]:
    """The starts (UTC instants) of the local days from `day` on, increasing."""
    last: datetime | None = None
    while True:
        at = datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC)
        # A day that a zone skipped entirely (Samoa, 2011-12-30) maps onto the next.
        if last is None or at > last:
            yield at
            last = at
        day += timedelta(days=1)


def _hour_starts(tz: ZoneInfo, at: datetime) -> Iterator[datetime]:
    """The starts (UTC instants) of the local hours from the one starting at `at` on."""
    while True:
        yield at
        nxt = at + timedelta(hours=1)
        loc = nxt.astimezone(tz)
        if loc.minute or loc.second or loc.microsecond:
            # The offset moved by a fraction of an hour: go back to the local hour.
            back = nxt - timedelta(minutes=loc.minute, seconds=loc.second)
            nxt = back if back > at else back + timedelta(hours=1)
        at = nxt


@dataclass(slots=True)
class _Starts:
    """One sequence of starts, as far as it was walked (instants and epoch seconds)."""

    walk: Iterator[datetime]
    instants: list[datetime] = field(default_factory=list)
    seconds: list[int] = field(default_factory=list)
    overflow: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reach(self, end: datetime, count: int) -> None:
        """Walk on until a start at or after `end`, or `count` starts in all."""
        with self.lock:
            instants = self.instants
            while len(instants) < count and (not instants or instants[-1] < end):
                if self.overflow:
                    raise OverflowError
                try:
                    at = next(self.walk)
                except OverflowError:
                    self.overflow = True
                    raise
                instants.append(at)
                self.seconds.append(epoch_seconds(at))


# Sequences by (zone, period, where they begin). Bounded: each holds at most the starts
# of one window of DASHBOARD_ANALYTICS_MAX_BUCKETS buckets past its beginning.
_SEQUENCES: BoundedCache[tuple[ZoneInfo, str, object], _Starts] = BoundedCache(64)


def _sequence(tz: ZoneInfo, period: Period, start: datetime) -> _Starts:
    """The sequence of starts from the one holding `start`."""
    local = start.astimezone(tz)
    if period == "day":
        day = local.date()
        key: tuple[ZoneInfo, str, object] = (tz, period, day)
        found = _SEQUENCES.get(key)
        return found if found is not None else _SEQUENCES.put(key, _Starts(_day_starts(tz, day)))
    at = local.replace(minute=0, second=0, microsecond=0).astimezone(UTC)
    key = (tz, period, at)
    found = _SEQUENCES.get(key)
    return found if found is not None else _SEQUENCES.put(key, _Starts(_hour_starts(tz, at)))


def bucket_starts(
    tz: ZoneInfo, period: Period, start: datetime, end: datetime, max_buckets: int
) -> tuple[list[datetime], list[int], datetime]:
    """The histogram's bucket starts (instants and epoch seconds) and the end of its last
    bucket; 422 when too many."""
    try:
        sequence = _sequence(tz, period, start)
        sequence.reach(end, max_buckets + 1)
    except OverflowError:
        # A bucket edge past year 9999 (or before year 1) in this zone.
        raise Unprocessable(
            "The window reaches the limits of the calendar.", loc=["query", "to"]
        ) from None
    count = bisect.bisect_left(sequence.instants, end)
    if count > max_buckets:
        raise Unprocessable(
            f"The window holds more than {max_buckets} {period} buckets; "
            "narrow it or use a longer period.",
            loc=["query", "period"],
        )
    return sequence.instants[:count], sequence.seconds[:count], sequence.instants[count]
