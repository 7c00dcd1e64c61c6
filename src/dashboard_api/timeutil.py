"""Time on the wire: RFC 3339, UTC, millisecond precision, `Z` suffix; naive input means UTC."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Protocol, TypeVar

from pydantic import AfterValidator, PlainSerializer


def to_utc(value: datetime) -> datetime:
    """Attach UTC to a naive datetime, convert an aware one to UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        # e.g. 0001-01-01T00:00:00+01:00: a ValueError makes it a 422, not a 500.
        raise ValueError("timestamp out of range once converted to UTC") from None


_Point = TypeVar("_Point", int, datetime)


def merge_ranges(ranges: list[tuple[_Point, _Point]]) -> list[tuple[_Point, _Point]]:
    """Half-open [start, end) ranges, sorted, with overlapping or touching ones joined."""
    out: list[tuple[_Point, _Point]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def format_ts(value: datetime) -> str:
    """`2026-11-25T17:03:44.123Z`."""
    v = to_utc(value)
    return v.strftime("%Y-%m-%dT%H:%M:%S.") + f"{v.microsecond // 1000:03d}Z"


# A datetime that accepts any offset (naive = UTC) and always serializes as RFC 3339 UTC.
UtcDateTime = Annotated[
    datetime,
    AfterValidator(to_utc),
    PlainSerializer(format_ts, return_type=str, when_used="json"),
]


class Clock(Protocol):
    """Where the service reads the time; tests inject a controllable one."""

    def now(self) -> datetime: ...


class SystemClock:
    """The real wall clock, in UTC."""

    def now(self) -> datetime:
        return datetime.now(UTC)
