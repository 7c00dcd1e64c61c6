"""Packed histogram bins: sums of packed rows equal sums bin by bin (negative counts
included), packing round-trips, and percentiles are the nearest rank of the counts."""

from __future__ import annotations

import math
from array import array

from hypothesis import given
from hypothesis import strategies as st

from dashboard_api.services.analytics.bins import BinSum, nearest_rank, pack, unpack

INT64 = st.integers(-(2**40), 2**40)
bins_st = st.lists(st.tuples(st.integers(0, 1200), INT64), max_size=40)


def _dense(bins: list[tuple[int, int]]) -> dict[int, int]:
    out: dict[int, int] = {}
    for index, count in bins:
        out[index] = out.get(index, 0) + count
    return {k: v for k, v in out.items() if v}


@given(rows=st.lists(bins_st, max_size=12), singles=bins_st)
def test_sums_of_packed_rows_equal_sums_by_bin(
    rows: list[list[tuple[int, int]]], singles: list[tuple[int, int]]
) -> None:
    acc = BinSum()
    for bins in rows:
        bin_lo, data = pack(bins)
        assert len(data) % 8 == 0
        assert unpack(bin_lo, data) == sorted(_dense(bins).items())
        acc.add_packed(bin_lo, data)
    other = BinSum()
    for index, count in singles:
        other.add_bin(index, count)
    acc.add(other)
    want = _dense([b for bins in rows for b in bins] + singles)
    lo, counts = acc.counts()
    got = {lo + i: n for i, n in enumerate(counts) if n}
    assert got == want
    if want:  # trimmed: no zero bin at either end
        assert counts[0]
        assert counts[-1]
        assert lo == min(want)
    else:
        assert (lo, list(counts)) == (0, [])
    assert unpack(*acc.packed()) == sorted(want.items())


def test_extreme_counts_and_bins() -> None:
    acc = BinSum()
    acc.add_bin(0, -(2**63))
    acc.add_bin(1150, 2**63 - 1)
    acc.add_bin(7, 2**63 - 1)
    acc.add_bin(7, -(2**63 - 1))
    lo, counts = acc.counts()
    assert (lo, len(counts)) == (0, 1151)
    assert (counts[0], counts[-1]) == (-(2**63), 2**63 - 1)
    assert sum(1 for n in counts if n) == 2
    assert BinSum.of({}).counts() == (0, array("q"))
    assert BinSum.of({5: 3, 9: 0, 2: -1}).counts() == (2, array("q", [-1, 0, 0, 3]))


@given(
    counts=st.lists(st.integers(0, 50), min_size=1, max_size=60),
    lo=st.integers(0, 1000),
    percent=st.integers(1, 100),
)
def test_nearest_rank(counts: list[int], lo: int, percent: int) -> None:
    values = [lo + i for i, n in enumerate(counts) for _ in range(n)]
    got = nearest_rank(lo, counts, [percent])
    if not values:
        assert got == {}
        return
    rank = math.ceil(percent * len(values) / 100)
    assert got == {percent: values[rank - 1]}


@given(rows=st.lists(bins_st, max_size=12), base=bins_st)
def test_many_rows_at_once_equal_rows_one_by_one(
    rows: list[list[tuple[int, int]]], base: list[tuple[int, int]]
) -> None:
    packed = [pack(bins) for bins in rows]
    one_by_one, at_once = BinSum(), BinSum()
    for index, count in base:
        one_by_one.add_bin(index, count)
        at_once.add_bin(index, count)
    for bin_lo, data in packed:
        one_by_one.add_packed(bin_lo, data)
    at_once.add_rows([lo for lo, _ in packed], [data for _, data in packed])
    assert at_once.counts() == one_by_one.counts()
    dense = _dense(base)
    assert BinSum.of_lists(list(dense), list(dense.values())).counts() == BinSum.of(dense).counts()
