"""Analytics rollups summed while tasks arrive in order of creation (the seed's bulk load).

`rebuild_rollups` reads every task back after a load and sums it in SQL: at 1M tasks
that took longer than loading them. A load that generates its tasks oldest first knows
each one's figures already; `RollupArrays` sums them a block of tasks at a time in array
operations (numpy): each task's contributions to its series keys, grouped by (block, key)
at the finest grain and then grain by grain from the finer one, the open block of each
grain carried to the next call, so memory holds a few blocks whatever the number of
tasks. The rows are those `rebuild_rollups` writes for the same tasks (same keys,
counters, `changes` = tasks, same packed histograms); `streamed_write` stores them and
tests/analytics/test_seed_rollups.py compares them with a rebuild.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from dashboard_api.services.analytics.layout import (
    BIN_THRESHOLDS,
    FAILURE_MARGINAL_SERIES,
    FAILURE_SERIES,
    GRAINS,
    HIST_GRAINS,
    KIND_DURATION,
    KIND_FIRST_OUTPUT,
    SERIES_ALL_MODELS,
    SERIES_MARGINAL,
    SERIES_MODEL_MARGINAL,
    SERIES_PER_MODEL,
    STATUS_INDEX,
)

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
REASONS = tuple(FAILURE_SERIES)  # a task's failure reason: an index into this, or -1
WIDTH = 13  # the counters (layout.COUNTERS)
_THRESHOLDS = np.array(BIN_THRESHOLDS, dtype=np.int64)
NBINS = len(BIN_THRESHOLDS) + 1
KINDS = 2
assert (KIND_DURATION, KIND_FIRST_OUTPUT) == (0, 1)


def value_bins(values_us: IntArray) -> IntArray:
    """`layout.value_bin` of each value."""
    return np.searchsorted(_THRESHOLDS, values_us, side="right").astype(np.int64)


class Keys:
    """The series keys (series, agent_type, source, model) that rollup rows are kept
    under, numbered: `series[k]` and codes into the vocabularies (-1: '')."""

    def __init__(self, na: int, ns: int, nm: int, *, histograms: bool) -> None:
        self.na, self.ns, self.nm = na, ns, nm
        rows: list[tuple[int, int, int, int]] = []
        self.per_model = len(rows)
        rows += [
            (SERIES_PER_MODEL, a, s, m) for a in range(na) for s in range(ns) for m in range(nm)
        ]
        self.failure = len(rows)
        for reason in REASONS:
            series = FAILURE_SERIES[reason]
            rows += [(series, a, s, m) for a in range(na) for s in range(ns) for m in range(nm)]
        self.all_models = len(rows)
        rows += [(SERIES_ALL_MODELS, a, s, -1) for a in range(na) for s in range(ns)]
        self.marginal = len(rows)
        if histograms:
            rows += [(SERIES_MARGINAL, a, -1, -1) for a in range(na)]
            rows += [(SERIES_MARGINAL, -1, s, -1) for s in range(ns)]
            rows.append((SERIES_MARGINAL, -1, -1, -1))
            self.model_marginal = len(rows)
            rows += [(SERIES_MODEL_MARGINAL, -1, -1, m) for m in range(nm)]
        else:
            rows.append((SERIES_MARGINAL, -1, -1, -1))
            self.failure_marginal = len(rows)
            rows += [(FAILURE_MARGINAL_SERIES[r], -1, -1, -1) for r in REASONS]
        table = np.array(rows, dtype=np.int64)
        self.series, self.agent, self.source, self.model = table.T
        self.size = len(rows)

    def combo(self, agent: IntArray, source: IntArray, model: IntArray) -> IntArray:
        return (agent * self.ns + source) * self.nm + model


@dataclass
class Groups:
    """Summed values per (block start, key), sorted by both."""

    bucket: IntArray
    key: IntArray
    values: IntArray  # (m, width)

    def __len__(self) -> int:
        return len(self.bucket)

    def where(self, mask: BoolArray) -> Groups:
        return Groups(self.bucket[mask], self.key[mask], self.values[mask])


def _group(bucket: IntArray, key: IntArray, values: IntArray, size: int) -> Groups:
    if len(bucket) == 0:
        return Groups(bucket, key, values)
    joint = bucket * size + key
    order = np.argsort(joint, kind="stable")
    joint = joint[order]
    starts = np.flatnonzero(np.concatenate(([True], joint[1:] != joint[:-1])))
    sums = np.add.reduceat(values[order], starts, axis=0)
    first = joint[starts]
    return Groups(first // size, first % size, sums)


def _concat(a: Groups, b: Groups) -> tuple[IntArray, IntArray, IntArray]:
    return (
        np.concatenate((a.bucket, b.bucket)),
        np.concatenate((a.key, b.key)),
        np.concatenate((a.values, b.values)),
    )


class _Levels:
    """Groups of one key space at each grain, the open block of each carried over."""

    def __init__(self, grains: Sequence[int], size: int, width: int) -> None:
        self.grains = grains
        self.size = size
        empty = np.empty(0, dtype=np.int64)
        self._carry = [Groups(empty, empty, np.empty((0, width), np.int64)) for _ in grains]

    def add(
        self, seconds: IntArray, key: IntArray, values: IntArray, *, last: int | None
    ) -> list[Groups]:
        """The closed groups of each grain after adding contributions at `seconds`
        (`last`: the latest task's second; None closes every block)."""
        closed: list[Groups] = []
        new: Groups | None = None
        for i, grain in enumerate(self.grains):
            if new is None:
                new = _group(seconds - seconds % grain, key, values, self.size)
            else:
                new = _group(new.bucket - new.bucket % grain, new.key, new.values, self.size)
            carry = self._carry[i]
            merged = new if len(carry) == 0 else _group(*_concat(carry, new), self.size)
            if last is None:
                closed.append(merged)
                self._carry[i] = merged.where(np.zeros(len(merged), dtype=bool))
            else:
                is_open = merged.bucket == last - last % grain
                closed.append(merged.where(~is_open))
                self._carry[i] = merged.where(is_open)
        return closed


@dataclass
class TaskArrays:
    """The figures of a block of tasks, in order of creation, that the rollups sum."""

    created_s: IntArray  # epoch seconds
    agent: IntArray  # codes into the vocabularies given to RollupArrays
    source: IntArray
    model: IntArray
    reason: IntArray  # index into REASONS, or -1
    status: IntArray  # STATUS_INDEX values (1..5)
    figures: IntArray  # (n, 5): cost_micros, input, output, cache read, cache write tokens
    duration_us: IntArray  # where timed
    timed: BoolArray
    first_output_us: IntArray  # where has_first (first output - start)
    has_first: BoolArray


@dataclass
class Closed:
    """Rows of closed blocks: counters per grain, histogram rows per histogram grain."""

    counters: list[tuple[int, Groups]]  # (grain, groups of Keys(histograms=False))
    histograms: list[tuple[int, HistRows]]


@dataclass
class HistRows:
    """Histogram rows: (bucket, key, kind) with `counts` as lanes (little-endian 64-bit
    counts from `bin_lo` up), bytes `offset` to `offset + length` of `lanes`."""

    bucket: IntArray
    key: IntArray
    kind: IntArray
    bin_lo: IntArray
    lanes: bytes
    offset: IntArray
    length: IntArray

    def __len__(self) -> int:
        return len(self.bucket)


class RollupArrays:
    """Rollup and histogram rows of tasks added oldest first, a block at a time."""

    def __init__(
        self, agent_types: Sequence[str], sources: Sequence[str], models: Sequence[str]
    ) -> None:
        self.names = (tuple(agent_types), tuple(sources), tuple(models))
        na, ns, nm = len(agent_types), len(sources), len(models)
        self.keys = Keys(na, ns, nm, histograms=False)
        self.hist_keys = Keys(na, ns, nm, histograms=True)
        self._counters = _Levels(GRAINS, self.keys.size, WIDTH)
        self._hist = _Levels(HIST_GRAINS, self.hist_keys.size * KINDS * NBINS, 1)
        self._last = -1

    def add(self, tasks: TaskArrays) -> Closed:
        """The rows of the blocks that these tasks closed."""
        if len(tasks.created_s):
            if tasks.created_s[0] < self._last:
                raise ValueError("tasks must be added in order of creation")
            self._last = int(tasks.created_s[-1])
        return self._add(tasks, last=self._last)

    def finish(self) -> Closed:
        """Close every open block."""
        empty = np.empty(0, dtype=np.int64)
        none = TaskArrays(
            empty, empty, empty, empty, empty, empty, np.empty((0, 5), np.int64),
            empty, np.empty(0, bool), empty, np.empty(0, bool),
        )  # fmt: skip
        return self._add(none, last=None)

    def _add(self, t: TaskArrays, *, last: int | None) -> Closed:
        counters = self._counters.add(*self._contributions(t), last=last)
        hist = self._hist.add(*self._bins(t), last=last)
        return Closed(
            list(zip(GRAINS, counters, strict=True)),
            [(g, self._hist_rows(groups)) for g, groups in zip(HIST_GRAINS, hist, strict=True)],
        )

    def _contributions(self, t: TaskArrays) -> tuple[IntArray, IntArray, IntArray]:
        n, k = len(t.created_s), self.keys
        values = np.zeros((n, WIDTH), dtype=np.int64)
        values[:, 0] = 1
        values[np.arange(n), t.status] = 1
        values[:, 6:11] = t.figures
        values[:, 11] = np.where(t.timed, t.duration_us, 0)
        values[:, 12] = t.timed
        combo = k.combo(t.agent, t.source, t.model)
        failed = t.reason >= 0
        keys = (
            k.per_model + combo,
            k.all_models + t.agent * k.ns + t.source,
            np.full(n, k.marginal, dtype=np.int64),
            k.failure + t.reason[failed] * (k.na * k.ns * k.nm) + combo[failed],
            k.failure_marginal + t.reason[failed],
        )
        seconds = t.created_s
        return (
            np.concatenate((seconds, seconds, seconds, seconds[failed], seconds[failed])),
            np.concatenate(keys),
            np.concatenate((values, values, values, values[failed], values[failed])),
        )

    def _bins(self, t: TaskArrays) -> tuple[IntArray, IntArray, IntArray]:
        k = self.hist_keys
        combo = k.combo(t.agent, t.source, t.model)
        seconds: list[IntArray] = []
        keys: list[IntArray] = []
        for kind, mask, value in (
            (KIND_DURATION, t.timed, np.maximum(t.duration_us, 0)),
            (KIND_FIRST_OUTPUT, t.has_first, t.first_output_us),
        ):
            at, bins = t.created_s[mask], value_bins(value[mask])
            a, s, m, c = t.agent[mask], t.source[mask], t.model[mask], combo[mask]
            series_keys = [
                k.per_model + c,
                k.all_models + a * k.ns + s,
                k.marginal + a,
                k.marginal + k.na + s,
                np.full(len(at), k.marginal + k.na + k.ns, dtype=np.int64),
                k.model_marginal + m,
            ]
            for key in series_keys:
                seconds.append(at)
                keys.append((key * KINDS + kind) * NBINS + bins)
            reason = t.reason[mask]
            failed = reason >= 0
            key = k.failure + reason[failed] * (k.na * k.ns * k.nm) + c[failed]
            seconds.append(at[failed])
            keys.append((key * KINDS + kind) * NBINS + bins[failed])
        joined = np.concatenate(keys)
        return np.concatenate(seconds), joined, np.ones((len(joined), 1), dtype=np.int64)

    def _hist_rows(self, groups: Groups) -> HistRows:
        """One row per (bucket, key, kind) of the bins' groups (sorted by bin within)."""
        row_key = groups.key // NBINS
        bins = groups.key % NBINS
        m = len(groups)
        new_row = np.ones(m, dtype=bool)
        if m:
            new_row[1:] = (groups.bucket[1:] != groups.bucket[:-1]) | (row_key[1:] != row_key[:-1])
        starts = np.flatnonzero(new_row)
        ends = np.append(starts[1:], m)[: len(starts)] - 1
        lo, hi = bins[starts], bins[ends]
        lanes_per_row = hi - lo + 1
        offset = np.cumsum(lanes_per_row) - lanes_per_row
        row_of = np.cumsum(new_row) - 1
        lanes = np.zeros(int(lanes_per_row.sum()), dtype="<u8")
        lanes[offset[row_of] + bins - lo[row_of]] = groups.values[:, 0]
        return HistRows(
            bucket=groups.bucket[starts],
            key=row_key[starts] // KINDS,
            kind=row_key[starts] % KINDS,
            bin_lo=lo,
            lanes=lanes.tobytes(),
            offset=offset * 8,
            length=lanes_per_row * 8,
        )


STATUS_CODES = np.array(
    [STATUS_INDEX[s] for s in ("queued", "running", "completed", "failed", "cancelled")]
)
