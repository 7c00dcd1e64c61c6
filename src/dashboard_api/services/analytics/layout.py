"""What the analytics rollups hold: grains, series, kinds, counters and log bins.

A task contributes to one block per grain, chosen by its `created_at`, in two series
(all models together, and per model) plus the marginals, and a task with a
`failure_reason` in that reason's series too. These are the layout's facts,
shared by the writers (`rollups`, `fold`), the readers (`window`, `reads`,
`performance`) and the task lists that count through the rollups (`services.tasks`);
this module imports nothing from the services, so any of them can depend on it.
"""

from __future__ import annotations

import bisect
from datetime import UTC, datetime, timedelta
from typing import Protocol

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
QUARTER = 900
DAY = 86400
# Nested block lengths in seconds: each divides the next, all aligned to the epoch. 15
# minutes is the finest so that every current IANA offset (30/45 min) lands on a block
# boundary; the coarser ones keep long windows down to a few dozen blocks. Each grain
# costs every task write two upserted rows, so there are no more than needed.
GRAINS: tuple[int, ...] = (
    QUARTER,
    3600,
    4 * 3600,
    DAY,
    4 * DAY,
    16 * DAY,
    64 * DAY,
    256 * DAY,
)
# Histograms are kept from 1 hour up: percentiles need window totals only, and the
# partial 1-hour blocks at a window's edges are binned from the raw rows (in SQL): at
# most 30 minutes of tasks per edge (the cover reads a partial block whole minus its
# outside part when that is the smaller), which grows with the task rate. A 4-hour finest
# grain left up to 2 hours of raw tasks per request (7,600 at 10M tasks, ~16 ms); the
# 1-hour rows cost ~3x the 4-hour grain's rows and one more row per series and kind in
# each write. The 15-minute grain would hold most of the histogram rows (23 M at 1M
# tasks against 13.8 M without it) for edges the 1-hour one already keeps small.
HIST_GRAINS: tuple[int, ...] = GRAINS[GRAINS.index(3600) :]
SERIES_ALL_MODELS = 0
SERIES_PER_MODEL = 1
# Marginals for unfiltered queries, which then read one row (per bin) per block instead
# of one per (agent_type, source[, model]) combination. Counters: series 2 holds the
# overall row (agent_type, source and model ''). Histograms: series 2 holds one row set
# per agent type (source ''), per source (agent_type '') and overall (both ''); series 3
# one per model (agent_type and source '').
SERIES_MARGINAL = 2
SERIES_MODEL_MARGINAL = 3
# The tasks that have a `failure_reason`, once more per reason, so that a failure_reason
# filter sums only their rows. Counters and histograms: one series per reason, per
# (agent_type, source, model) (filtered queries, performance by model sum over them).
# Counters also keep one overall row per block and reason (agent_type, source and model
# ''), for the summary's breakdown and for queries filtered by failure_reason alone.
# Only failed tasks have a reason (the lease reaper's, or the producer's), so these rows
# cost the writes of failed tasks alone. A new reason needs a new pair of series and a
# rebuild (a reason missing here is counted in no failure series).
FAILURE_SERIES: dict[str, int] = {"lease_expired": 4, "agent": 5}
FAILURE_MARGINAL_SERIES: dict[str, int] = {"lease_expired": 6, "agent": 7}
KIND_DURATION = 0
# The PostgreSQL advisory lock that folds of pending contributions (and rebuilds) hold, so
# that one runs at a time across every replica ("DASHFOLD" in ASCII).
FOLD_LOCK_KEY = 0x4441534846_4F4C44
KIND_FIRST_OUTPUT = 1

COUNTERS: tuple[str, ...] = (
    "tasks",
    "queued",
    "running",
    "completed",
    "failed",
    "cancelled",
    "cost_micros",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "duration_sum_us",
    "duration_count",
)
# What a fold adds to a rollup row: the counters and the row's change counter.
ROLLUP_VALUES: tuple[str, ...] = (*COUNTERS, "changes")
STATUS_INDEX = {"queued": 1, "running": 2, "completed": 3, "failed": 4, "cancelled": 5}
KEY_COLUMNS = ("grain", "bucket", "series", "agent_type", "source", "model")
# A histogram delta row (of `task_deltas`) is (*HIST_KEY_COLUMNS, count); a stored
# histogram row is (*HIST_ROW_KEY, *HIST_VALUES), one per HIST_ROW_KEY.
HIST_KEY_COLUMNS = (*KEY_COLUMNS, "kind", "bin")
HIST_ROW_KEY = (*KEY_COLUMNS, "kind")
HIST_VALUES = ("bin_lo", "counts")


def _thresholds() -> tuple[int, ...]:
    # Lower bounds (µs) of the log bins: exact integers below 25 µs, then each bin at most
    # 4 % wider than its start, so its harmonic-mean representative is within 1.97 %.
    out = [1]
    limit = 2**63 - 1
    while True:
        nxt = max(out[-1] + 1, out[-1] * 104 // 100)
        if nxt > limit:
            return tuple(out)
        out.append(nxt)


BIN_THRESHOLDS = _thresholds()


def value_bin(value_us: int) -> int:
    """The log bin of a non-negative value in µs (0 for 0)."""
    return bisect.bisect_right(BIN_THRESHOLDS, value_us)


def bin_value(index: int) -> float:
    """The representative value (µs) of a bin: within 2 % of anything in it."""
    if index <= 0:
        return 0.0
    lo = BIN_THRESHOLDS[index - 1]
    hi = BIN_THRESHOLDS[index] - 1 if index < len(BIN_THRESHOLDS) else lo * 104 // 100
    return 2.0 * lo * hi / (lo + hi)


def epoch_seconds(at: datetime) -> int:
    """Whole seconds since the epoch, floored."""
    return (at - EPOCH) // timedelta(seconds=1)


def block_start(at: datetime, grain: int) -> int:
    """The start (epoch seconds) of the block of `grain` seconds holding `at`."""
    seconds = epoch_seconds(at)
    return seconds - seconds % grain


class TaskFigures(Protocol):
    """What analytics reads of a task (a TaskSnapshot, or a row of the tasks table)."""

    @property
    def status(self) -> str: ...
    @property
    def cost_micros(self) -> int: ...
    @property
    def input_tokens(self) -> int: ...
    @property
    def output_tokens(self) -> int: ...
    @property
    def cache_read_tokens(self) -> int: ...
    @property
    def cache_write_tokens(self) -> int: ...
    @property
    def duration_us(self) -> int | None: ...
    @property
    def started_at(self) -> datetime | None: ...
    @property
    def first_output_at(self) -> datetime | None: ...


def counters_of(s: TaskFigures) -> list[int]:
    """What one task adds to its block, in the order of COUNTERS."""
    out = [0] * len(COUNTERS)
    out[0] = 1
    out[STATUS_INDEX[s.status]] = 1
    out[6] = s.cost_micros
    out[7] = s.input_tokens
    out[8] = s.output_tokens
    out[9] = s.cache_read_tokens
    out[10] = s.cache_write_tokens
    if s.duration_us is not None:
        out[11] = s.duration_us
        out[12] = 1
    return out


def first_output_us(s: TaskFigures) -> int | None:
    """Time from start to first output in µs (0 when output came before the start)."""
    if s.first_output_at is None or s.started_at is None:
        return None
    return max(0, (s.first_output_at - s.started_at) // timedelta(microseconds=1))


def hist_points(s: TaskFigures) -> list[tuple[int, int]]:
    """(kind, bin) of each histogram value of a task."""
    out = []
    if s.duration_us is not None:
        out.append((KIND_DURATION, value_bin(max(0, s.duration_us))))
    first = first_output_us(s)
    if first is not None:
        out.append((KIND_FIRST_OUTPUT, value_bin(first)))
    return out
