"""PostgreSQL's binary COPY format, written from plain Python values.

asyncpg's `copy_records_to_table` encodes every value through its type's codec, which for
a bulk load of generated rows cost as much CPU as generating them (a profile of the seed
showed the two neck and neck). Rows built here skip that: timestamps are integers (µs
since the Unix epoch), repeated strings are encoded once, and each field is its length
and bytes (https://www.postgresql.org/docs/current/sql-copy.html, "Binary Format").
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
TRAILER = struct.pack("!h", -1)
NULL = struct.pack("!i", -1)
# timestamptz is µs since 2000-01-01 UTC.
_PG_EPOCH_US = 946_684_800_000_000
_INT8 = struct.Struct("!iq")
_INT4 = struct.Struct("!ii")
TRUE = b"\x00\x00\x00\x01\x01"
FALSE = b"\x00\x00\x00\x01\x00"

Encoder = Callable[[Any], bytes]


def int8(value: int | None) -> bytes:
    return NULL if value is None else _INT8.pack(8, value)


def int4(value: int | None) -> bytes:
    return NULL if value is None else _INT4.pack(4, value)


def boolean(value: bool | None) -> bytes:
    return NULL if value is None else (TRUE if value else FALSE)


def timestamp_us(value: int | None) -> bytes:
    """A timestamptz given as µs since the Unix epoch."""
    return NULL if value is None else _INT8.pack(8, value - _PG_EPOCH_US)


def text(value: str | None) -> bytes:
    if value is None:
        return NULL
    data = value.encode()
    return struct.pack("!i", len(data)) + data


def jsonb(value: str) -> bytes:
    """A jsonb value given as its JSON text (binary jsonb is a version byte, then text)."""
    data = b"\x01" + value.encode()
    return struct.pack("!i", len(data)) + data


class TextCache:
    """`text` (or `encode`) of values that repeat (statuses, agent types, user ids):
    encoded once each.

    Bounded: past `limit` distinct values the cache stops growing (each then costs an
    encode), so that a column of unique values cannot fill memory."""

    def __init__(self, encode: Callable[[str], bytes] | None = None, limit: int = 100_000) -> None:
        self._done: dict[str | None, bytes] = {None: NULL}
        self._encode = encode or text
        self._limit = limit

    def __call__(self, value: str | None) -> bytes:
        hit = self._done.get(value)
        if hit is not None:
            return hit
        assert value is not None
        out = self._encode(value)
        if len(self._done) < self._limit:
            self._done[value] = out
        return out


def row_prefix(columns: int) -> bytes:
    """What starts each row: its number of fields."""
    return struct.pack("!h", columns)
