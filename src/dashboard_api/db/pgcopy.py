"""PostgreSQL's binary COPY format, written a block of rows at a time from arrays.

A row is its field count, then each field as its length (-1: NULL) and bytes
(https://www.postgresql.org/docs/current/sql-copy.html, "Binary Format"). Encoding value
by value in Python (or through asyncpg's per-value codecs) cost as much CPU as the rest
of a bulk load; here every column of a block is described as an array operation: the
fixed-width values of several columns packed at once through a big-endian structured
dtype, repeated strings encoded once and referred to by index. `Rows` lays the pieces out
as segments of one byte pool and gathers them into the rows with a single indexed copy.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
TRAILER = struct.pack("!h", -1)
NULL = struct.pack("!i", -1)
# timestamptz is µs since 2000-01-01 UTC.
PG_EPOCH_US = 946_684_800_000_000

IntArray = npt.NDArray[np.int64]
_ROWS_AT_ONCE = 4096
_WIDTHS = {2: ">i2", 4: ">i4", 8: ">i8"}


def field(value: bytes | None) -> bytes:
    """One field: its length and bytes (NULL for None)."""
    return NULL if value is None else struct.pack("!i", len(value)) + value


class Strings:
    """Repeated values of a text column encoded once: `codes` index `values` (None: NULL)."""

    def __init__(self, values: Sequence[str | None], *, prefix: bytes = b"") -> None:
        encoded = [None if v is None else prefix + v.encode() for v in values]
        self.fields = [field(v) for v in encoded]
        self.pool = b"".join(self.fields)
        lengths = np.array([len(f) for f in self.fields], dtype=np.int64)
        self.lengths = lengths
        self.starts = np.cumsum(lengths) - lengths
        # The content alone (no length), for text put together from several parts.
        self.content_lengths = np.maximum(lengths - 4, 0)


class Rows:
    """The binary COPY data of `n` rows, added column by column, left to right."""

    def __init__(self, n: int, columns: int) -> None:
        self.n = n
        self._pool: list[bytes] = []
        self._size = 0
        self._starts: list[IntArray] = []
        self._lengths: list[IntArray] = []
        self._pools: dict[int, int] = {}
        self._const(struct.pack("!h", columns))

    def _add(self, data: bytes) -> int:
        at = self._size
        self._pool.append(data)
        self._size += len(data)
        return at

    def _segment(self, starts: IntArray | int, lengths: IntArray | int) -> None:
        self._starts.append(np.broadcast_to(np.asarray(starts, dtype=np.int64), (self.n,)))
        self._lengths.append(np.broadcast_to(np.asarray(lengths, dtype=np.int64), (self.n,)))

    def _const(self, data: bytes) -> None:
        self._segment(self._add(data), len(data))

    def null(self) -> None:
        self._const(NULL)

    def constant(self, value: bytes | None) -> None:
        """The same field in every row."""
        self._const(field(value))

    def _strings_at(self, strings: Strings) -> int:
        at = self._pools.get(id(strings))
        if at is None:
            at = self._pools[id(strings)] = self._add(strings.pool)
        return at

    def strings(self, strings: Strings, codes: npt.NDArray[np.integer]) -> None:
        at = self._strings_at(strings)
        self._segment(at + strings.starts[codes], strings.lengths[codes])

    def ints(self, columns: Sequence[npt.NDArray[np.integer]], width: int) -> None:
        """Several non-null integer columns of one width (2, 4 or 8 bytes), side by side."""
        kind = _WIDTHS[width]
        dtype = np.dtype(
            [(f, t) for i in range(len(columns)) for f, t in ((f"l{i}", ">i4"), (f"v{i}", kind))]
        )
        packed = np.empty(self.n, dtype=dtype)
        for i, values in enumerate(columns):
            packed[f"l{i}"] = width
            packed[f"v{i}"] = values
        at = self._add(packed.tobytes())
        self._segment(at + np.arange(self.n, dtype=np.int64) * dtype.itemsize, dtype.itemsize)

    def nullable_int(
        self, values: npt.NDArray[np.integer], null: npt.NDArray[np.bool_], width: int
    ) -> None:
        """An integer column whose rows where `null` is set are NULL."""
        at_null = self._add(NULL)
        kind = _WIDTHS[width]
        packed = np.empty(self.n, dtype=np.dtype([("l", ">i4"), ("v", kind)]))
        packed["l"] = width
        packed["v"] = np.where(null, 0, values)
        at = self._add(packed.tobytes())
        size = 4 + width
        starts = np.where(null, at_null, at + np.arange(self.n, dtype=np.int64) * size)
        self._segment(starts, np.where(null, 4, size).astype(np.int64))

    def timestamps(self, epoch_us: IntArray, null: npt.NDArray[np.bool_] | None = None) -> None:
        """timestamptz values given as µs since the Unix epoch."""
        if null is None:
            self.ints([epoch_us - PG_EPOCH_US], 8)
        else:
            self.nullable_int(epoch_us - PG_EPOCH_US, null, 8)

    def fixed(self, data: npt.NDArray[np.uint8], rows: IntArray | None = None) -> None:
        """Non-null values of one length: row i of `data` (shape (m, length)), or row
        `rows[i]` of it."""
        m, length = data.shape
        framed = np.empty((m, 4 + length), dtype=np.uint8)
        framed[:, :4] = np.frombuffer(struct.pack("!i", length), dtype=np.uint8)
        framed[:, 4:] = data
        at = self._add(framed.tobytes())
        index = np.arange(m, dtype=np.int64) if rows is None else rows
        self._segment(at + index * (4 + length), 4 + length)

    def concat(self, parts: Sequence[tuple[Strings, npt.NDArray[np.integer]]]) -> None:
        """Non-null text made of several parts, each a coded value of repeated strings
        (encoded with their lengths, which are skipped here)."""
        total = sum(s.content_lengths[c] for s, c in parts)
        header = np.asarray(total, dtype=">i4").tobytes()
        at = self._add(header)
        self._segment(at + np.arange(self.n, dtype=np.int64) * 4, 4)
        for strings, codes in parts:
            base = self._strings_at(strings)
            self._segment(base + strings.starts[codes] + 4, strings.content_lengths[codes])

    def varbytes(self, data: bytes, offsets: IntArray, lengths: IntArray) -> None:
        """Non-null values of any length: bytes `offsets[i]` to `+ lengths[i]` of `data`."""
        header = np.asarray(lengths, dtype=">i4").tobytes()
        at = self._add(header)
        self._segment(at + np.arange(self.n, dtype=np.int64) * 4, 4)
        base = self._add(data)
        self._segment(base + offsets, lengths)

    def data(self) -> bytes:
        """The rows (without the COPY header and trailer)."""
        pool = b"".join(self._pool)
        parts = []
        # A few thousand rows at a time: the byte indexes stay small (and in cache).
        for first in range(0, self.n, _ROWS_AT_ONCE):
            last = min(self.n, first + _ROWS_AT_ONCE)
            starts = np.stack([s[first:last] for s in self._starts], axis=1).ravel()
            lengths = np.stack([s[first:last] for s in self._lengths], axis=1).ravel()
            parts.append(gather(pool, starts, lengths))
        return b"".join(parts)


def gather(pool: bytes, starts: IntArray, lengths: IntArray) -> bytes:
    """The byte ranges `starts[i]` to `+ lengths[i]` of `pool`, one after the other."""
    total = int(lengths.sum())
    index_type = np.int32 if len(pool) < 2**31 and total < 2**31 else np.int64
    ends = np.cumsum(lengths)
    shift = (starts - (ends - lengths)).astype(index_type)
    index = np.repeat(shift, lengths)
    index += np.arange(total, dtype=index_type)
    return np.frombuffer(pool, dtype=np.uint8)[index].tobytes()


def copy_data(parts: Sequence[bytes]) -> bytes:
    """A whole COPY stream of the rows' data parts."""
    return b"".join((HEADER, *parts, TRAILER))
