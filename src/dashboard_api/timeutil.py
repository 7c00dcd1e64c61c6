"""Time on the wire: RFC 3339, UTC, millisecond precision, `Z` suffix; naive input means UTC."""

from __future__ import annotations

import re
import zoneinfo
from datetime import UTC, datetime
from typing import Annotated, Protocol, TypeVar

from pydantic import AfterValidator, BeforeValidator, PlainSerializer, TypeAdapter


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


# The IANA time zones the API takes (the database tzdata ships), listed in the schema.
TIME_ZONES = sorted(zoneinfo.available_timezones() | {"UTC"})

# A date and a time, as RFC 3339 and ISO 8601 write them (offset optional: naive is UTC).
_TIMESTAMP_TEXT = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")
_LAX_DATETIME = TypeAdapter(datetime)


def parse_timestamp_text(value: object) -> object:
    """A timestamp given as text, parsed; anything else but a datetime is refused.

    The schema says `string` with `format: date-time`, so a number (`0`, `"0.5"`), which
    pydantic would read as seconds since 1970, or a bare date is a 422, not a timestamp.
    Parsed here, so that request models can be strict (no other coercion) and still take
    timestamps from JSON text.
    """
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and _TIMESTAMP_TEXT.match(value):
        return _LAX_DATETIME.validate_python(value)
    raise ValueError("must be an RFC 3339 timestamp such as 2026-11-25T17:03:44Z")


# A datetime that accepts any offset (naive = UTC) and always serializes as RFC 3339 UTC.
UtcDateTime = Annotated[
    datetime,
    BeforeValidator(parse_timestamp_text),
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
