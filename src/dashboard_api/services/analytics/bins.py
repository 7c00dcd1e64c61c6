"""A block's histogram bins packed in one value, and sums of many of them.

A histogram row stores the counts of bins `bin_lo`, `bin_lo + 1`, ... as consecutive
little-endian signed 64-bit integers (`counts`, bytea / BLOB): the same bytes on both
backends, and a 30-day percentile query reads ~550 such rows instead of ~62,000 rows of
one bin each.

Sums are done on Python integers whose 64-bit "lanes" are the bins: a row's bytes become
one integer with `int.from_bytes`, and adding two such integers adds every bin at once in
C (about 3x faster than adding arrays bin by bin here, and no numpy). A lane may hold a
negative count (a delta, or a rollup that a write skipped): lanes are read as signed
two's complement and the integer is the exact value `sum(count_i * 2**(64 * i))`, so
sums stay exact as long as every bin's total fits in 64 bits.
"""

from __future__ import annotations

import bisect
import itertools
import sys
from array import array
from collections.abc import Iterable, Sequence

LANE_BITS = 64
_LANE_BYTES = 8
# Enough lanes for every log bin there is (~1,150): the sign-bit pattern of n lanes is a
# right shift of this one.
_MAX_LANES = 2048
_SIGN_BITS = int.from_bytes((b"\0" * 7 + b"\x80") * _MAX_LANES, "little")


def _sign_bits(lanes: int) -> int:
    """The integer with bit 63 of each of the lowest `lanes` lanes set."""
    if lanes <= _MAX_LANES:
        return _SIGN_BITS >> (LANE_BITS * (_MAX_LANES - lanes))
    return int.from_bytes((b"\0" * 7 + b"\x80") * lanes, "little")


def _le(values: array[int]) -> array[int]:
    if sys.byteorder == "big":  # pragma: no cover - every machine we run on is little-endian
        values.byteswap()
    return values


class BinSum:
    """Counts per bin, added from packed rows, single bins or other sums."""

    __slots__ = ("lo", "x")

    def __init__(self) -> None:
        self.lo = 0  # the bin of the lowest lane of `x`
        self.x = 0  # sum(count(lo + i) * 2**(64 * i))

    @classmethod
    def of(cls, bins: dict[int, int]) -> BinSum:
        """The sum holding these counts per bin (packed in one pass, not bin by bin)."""
        out = cls()
        if bins:
            lo = min(bins)
            values = array("q", bytes(_LANE_BYTES * (max(bins) - lo + 1)))
            for index, count in bins.items():
                values[index - lo] = count
            out.add_packed(lo, _le(values).tobytes())
        return out

    @classmethod
    def of_lists(cls, bins: Sequence[int], counts: Sequence[int]) -> BinSum:
        """The sum holding counts[i] in bin bins[i] (each bin once)."""
        out = cls()
        if bins:
            lo = min(bins)
            values = array("q", bytes(_LANE_BYTES * (max(bins) - lo + 1)))
            for index, count in zip(bins, counts, strict=True):
                values[index - lo] = count
            out.add_packed(lo, _le(values).tobytes())
        return out

    def _add_lanes(self, lo: int, value: int) -> None:
        if not self.x:
            self.lo, self.x = lo, value
        elif lo >= self.lo:
            self.x += value << (LANE_BITS * (lo - self.lo))
        else:
            self.x = (self.x << (LANE_BITS * (self.lo - lo))) + value
            self.lo = lo

    def add_packed(self, bin_lo: int, data: bytes) -> None:
        """Add a stored row's counts."""
        lanes = len(data) // _LANE_BYTES
        if lanes:
            value = int.from_bytes(data, "little")
            signs = _sign_bits(lanes)
            # Stored counts are rarely negative: then the unsigned value is the count
            # (one AND to check, instead of two operations to convert every row).
            if value & signs:
                value = (value ^ signs) - signs
            self._add_lanes(bin_lo, value)

    def add_rows(self, bin_los: Sequence[int], data: Sequence[bytes]) -> None:
        """Add many stored rows' counts (`add_packed` of each): the rows of each `bin_lo`
        are added unshifted, then each such sum is shifted once into one integer, added
        to this sum last (fewer operations on wide integers than a row at a time)."""
        if not bin_los:
            return
        by_lo: dict[int, int] = {}
        for bin_lo, packed in zip(bin_los, data, strict=True):
            value = int.from_bytes(packed, "little")
            # A lane is negative when its top byte is (0xff...): cheaper to look at the
            # top bytes than to AND the whole value with the sign bits.
            if packed[_LANE_BYTES - 1 :: _LANE_BYTES].strip(b"\0"):
                signs = _sign_bits(len(packed) // _LANE_BYTES)
                if value & signs:
                    value = (value ^ signs) - signs
            by_lo[bin_lo] = by_lo.get(bin_lo, 0) + value
        lo = min(by_lo)
        total = 0
        for bin_lo, value in by_lo.items():
            total += value << (LANE_BITS * (bin_lo - lo))
        if total:
            self._add_lanes(lo, total)

    def add_bin(self, index: int, count: int) -> None:
        """Add `count` to one bin."""
        if count:
            self._add_lanes(index, count)

    def add(self, other: BinSum) -> None:
        """Add another sum's counts."""
        if other.x:
            self._add_lanes(other.lo, other.x)

    def counts(self) -> tuple[int, array[int]]:
        """(first bin, counts from it), without zero bins at either end; (0, []) if none."""
        x = self.x
        if not x:
            return 0, array("q")
        lanes = abs(x).bit_length() // LANE_BITS + 2
        signs = _sign_bits(lanes)
        # x + signs has each lane's (count + 2**63) as an unsigned digit; flipping bit 63
        # back gives each count in two's complement.
        raw = ((x + signs) ^ signs).to_bytes(lanes * _LANE_BYTES, "little")
        values = _le(array("q", raw))
        first = 0
        while not values[first]:
            first += 1
        last = len(values)
        while not values[last - 1]:
            last -= 1
        return self.lo + first, values[first:last]

    def packed(self) -> tuple[int, bytes]:
        """(bin_lo, counts) as stored."""
        lo, values = self.counts()
        return lo, _le(values).tobytes()


def unpack(bin_lo: int, data: bytes) -> list[tuple[int, int]]:
    """(bin, count) of the non-zero bins of a stored row."""
    values = _le(array("q", data))
    return [(bin_lo + i, n) for i, n in enumerate(values) if n]


def pack(bins: Iterable[tuple[int, int]]) -> tuple[int, bytes]:
    """A stored row's (bin_lo, counts) for (bin, count) pairs (repeated bins add up)."""
    acc = BinSum()
    for index, count in bins:
        acc.add_bin(index, count)
    return acc.packed()


def nearest_rank(lo: int, counts: Sequence[int], percents: Sequence[int]) -> dict[int, int]:
    """The bin of each percentile (nearest rank): the first bin whose running count c
    reaches p % of the total, that is 100 c >= p * total as c is whole. None found (no
    positive total): empty."""
    running = list(itertools.accumulate(counts))
    total = running[-1] if running else 0
    if total <= 0:
        return {}
    if min(counts) >= 0:
        # Running counts never decrease: the first c >= ceil(p * total / 100), by bisection.
        return {p: lo + bisect.bisect_left(running, -(-total * p // 100)) for p in percents}
    out: dict[int, int] = {}
    for i, c in enumerate(running):
        for p in percents:
            if p not in out and c * 100 >= total * p:
                out[p] = lo + i
        if len(out) == len(percents):
            break
    return out
