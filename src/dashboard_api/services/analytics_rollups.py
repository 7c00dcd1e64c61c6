"""Analytics rollups: kept by deltas in the transaction of every task write, or rebuilt.

A task contributes to one block per grain, chosen by its `created_at`, in two series
(all models together, and per model). Every write subtracts what the task contributed
before and adds what it contributes now, so status moves, late metrics and model
changes land in the right blocks without recomputation.
"""

from __future__ import annotations

import bisect
import itertools
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import Table, case, delete, func, insert, literal, select
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard_api.db.dialect import (
    analyze_tables,
    epoch_bucket,
    lock_tables_exclusive,
    log_bin,
    micros_between,
    prepare_log_bin,
    upsert_add_many,
)
from dashboard_api.db.models.analytics import AnalyticsHistogram, AnalyticsRollup
from dashboard_api.db.models.tasks import Task
from dashboard_api.services.task_hooks import TaskSnapshot

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
SERIES_ALL_MODELS = 0
SERIES_PER_MODEL = 1
# Histograms only: marginals for unfiltered queries, which then read a few rows per bin
# instead of one per (agent_type, source[, model]) combination. Series 2 holds one row
# set per agent type (source ''), per source (agent_type '') and overall (both '');
# series 3 one per model (agent_type and source '').
SERIES_MARGINAL = 2
SERIES_MODEL_MARGINAL = 3
KIND_DURATION = 0
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
_STATUS_INDEX = {"queued": 1, "running": 2, "completed": 3, "failed": 4, "cancelled": 5}
KEY_COLUMNS = ("grain", "bucket", "series", "agent_type", "source", "model")
HIST_KEY_COLUMNS = (*KEY_COLUMNS, "kind", "bin")


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
    out[_STATUS_INDEX[s.status]] = 1
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


def _keys(s: TaskSnapshot) -> list[tuple[Any, ...]]:
    keys: list[tuple[Any, ...]] = []
    for grain in GRAINS:
        bucket = block_start(s.created_at, grain)
        keys.append((grain, bucket, SERIES_ALL_MODELS, s.agent_type, s.source, ""))
        keys.append((grain, bucket, SERIES_PER_MODEL, s.agent_type, s.source, s.model or ""))
    return keys


def _hist_keys(s: TaskSnapshot) -> list[tuple[Any, ...]]:
    keys = _keys(s)
    for grain in GRAINS:
        bucket = block_start(s.created_at, grain)
        keys.append((grain, bucket, SERIES_MARGINAL, s.agent_type, "", ""))
        keys.append((grain, bucket, SERIES_MARGINAL, "", s.source, ""))
        keys.append((grain, bucket, SERIES_MARGINAL, "", "", ""))
        keys.append((grain, bucket, SERIES_MODEL_MARGINAL, "", "", s.model or ""))
    return keys


def task_deltas(
    before: TaskSnapshot | None, after: TaskSnapshot
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Rollup and histogram deltas of one write, sorted by key, zero rows dropped."""
    counters: dict[tuple[Any, ...], list[int]] = {}
    hist: dict[tuple[Any, ...], int] = {}
    for snap, sign in ((before, -1), (after, 1)):
        if snap is None:
            continue
        values = counters_of(snap)
        points = hist_points(snap)
        for key in _keys(snap):
            acc = counters.setdefault(key, [0] * len(COUNTERS))
            for i, v in enumerate(values):
                acc[i] += sign * v
        if not points:
            continue
        for key in _hist_keys(snap):
            for kind, b in points:
                hkey = (*key, kind, b)
                hist[hkey] = hist.get(hkey, 0) + sign
    rows = [(*k, *v) for k, v in sorted(counters.items()) if any(v)]
    hrows = [(*k, n) for k, n in sorted(hist.items()) if n]
    return rows, hrows


_ROLLUPS: Table = AnalyticsRollup.__table__  # type: ignore[assignment]
_HIST: Table = AnalyticsHistogram.__table__  # type: ignore[assignment]


async def apply_task_write(
    session: AsyncSession, before: TaskSnapshot | None, after: TaskSnapshot
) -> None:
    """Add one task write's deltas to the rollups (called inside the write's transaction)."""
    if not session.info.get("analytics_rollups_enabled", True):
        return
    rows, hrows = task_deltas(before, after)
    # Rows are sorted by key, and rollups always go before histograms, so that two
    # concurrent writers lock shared rows in the same order and never deadlock.
    await upsert_add_many(session, _ROLLUPS, KEY_COLUMNS, COUNTERS, rows)
    await upsert_add_many(session, _HIST, HIST_KEY_COLUMNS, ("count",), hrows)


# --- rebuild -----------------------------------------------------------------------------


def _status_count(status: str) -> Any:
    return func.coalesce(func.sum(case((Task.status == status, 1), else_=0)), 0)


async def rebuild_rollups(session: AsyncSession) -> None:
    """Recompute every rollup from the raw tasks (in the caller's transaction)."""
    # Writers of tasks wait until this transaction ends: their deltas then apply on top
    # of a rebuild that already saw every task committed before it.
    await lock_tables_exclusive(session, [_ROLLUPS.name, _HIST.name])
    await session.execute(delete(AnalyticsHistogram))
    await session.execute(delete(AnalyticsRollup))
    await prepare_log_bin(session, BIN_THRESHOLDS)
    await _insert_finest(session)
    await _insert_marginals(session)
    for prev, grain in itertools.pairwise(GRAINS):
        await _insert_coarser(session, prev, grain)
    # Fresh planner statistics: without them PostgreSQL misjudges the block ranges.
    await analyze_tables(session, [_ROLLUPS.name, _HIST.name])


async def _insert_finest(session: AsyncSession) -> None:
    bucket = epoch_bucket(session, Task.created_at, QUARTER).label("bucket")
    model_all = literal("").label("model")
    model_one = func.coalesce(Task.model, "").label("model")
    sums = [
        func.count().label("tasks"),
        *(_status_count(s).label(s) for s in _STATUS_INDEX),
        *(
            func.coalesce(func.sum(getattr(Task, c)), 0).label(c)
            for c in (
                "cost_micros",
                "input_tokens",
                "output_tokens",
                "cache_read_tokens",
                "cache_write_tokens",
            )
        ),
        func.coalesce(func.sum(Task.duration_us), 0).label("duration_sum_us"),
        func.count(Task.duration_us).label("duration_count"),
    ]
    for series, model in ((SERIES_ALL_MODELS, model_all), (SERIES_PER_MODEL, model_one)):
        sel = select(
            literal(QUARTER).label("grain"),
            bucket,
            literal(series).label("series"),
            Task.agent_type,
            Task.source,
            model,
            *sums,
        ).group_by(bucket, Task.agent_type, Task.source, model)
        # In key order, so that a block's rows share heap pages (fewer reads per query).
        sel = sel.order_by(bucket, Task.agent_type, Task.source, model)
        await session.execute(insert(AnalyticsRollup).from_select([*KEY_COLUMNS, *COUNTERS], sel))

        first = micros_between(session, Task.first_output_at, Task.started_at)
        kinds: tuple[tuple[int, Any, Any], ...] = (
            (KIND_DURATION, Task.duration_us, Task.duration_us.is_not(None)),
            (
                KIND_FIRST_OUTPUT,
                case((first < 0, 0), else_=first),
                Task.first_output_at.is_not(None) & Task.started_at.is_not(None),
            ),
        )
        for kind, value, present in kinds:
            b = log_bin(session, value, BIN_THRESHOLDS).label("bin")
            hsel = (
                select(
                    literal(QUARTER).label("grain"),
                    bucket,
                    literal(series).label("series"),
                    Task.agent_type,
                    Task.source,
                    model,
                    literal(kind).label("kind"),
                    b,
                    func.count().label("count"),
                )
                .where(present)
                .group_by(bucket, Task.agent_type, Task.source, model, b)
                .order_by(bucket, Task.agent_type, Task.source, model, b)
            )
            await session.execute(
                insert(AnalyticsHistogram).from_select([*HIST_KEY_COLUMNS, "count"], hsel)
            )


async def _insert_marginals(session: AsyncSession) -> None:
    h = AnalyticsHistogram
    empty = literal("")
    plans: tuple[tuple[int, int, Any, Any, Any], ...] = (
        (SERIES_ALL_MODELS, SERIES_MARGINAL, h.agent_type, empty, empty),
        (SERIES_ALL_MODELS, SERIES_MARGINAL, empty, h.source, empty),
        (SERIES_ALL_MODELS, SERIES_MARGINAL, empty, empty, empty),
        (SERIES_PER_MODEL, SERIES_MODEL_MARGINAL, empty, empty, h.model),
    )
    for source_series, series, agent_type, source, model in plans:
        groups = [c for c in (agent_type, source, model) if c is not empty]
        sel = (
            select(
                h.grain,
                h.bucket,
                literal(series),
                agent_type,
                source,
                model,
                h.kind,
                h.bin,
                func.sum(h.count),
            )
            .where(h.grain == QUARTER, h.series == source_series)
            .group_by(h.grain, h.bucket, *groups, h.kind, h.bin)
            .order_by(h.grain, h.bucket, *groups, h.kind, h.bin)
        )
        await session.execute(
            insert(AnalyticsHistogram).from_select([*HIST_KEY_COLUMNS, "count"], sel)
        )


async def _insert_coarser(session: AsyncSession, prev: int, grain: int) -> None:
    r = AnalyticsRollup
    bucket = (r.bucket - (r.bucket % grain + grain) % grain).label("bucket")
    sel = (
        select(
            literal(grain).label("grain"),
            bucket,
            r.series,
            r.agent_type,
            r.source,
            r.model,
            *(func.sum(getattr(r, c)).label(c) for c in COUNTERS),
        )
        .where(r.grain == prev)
        .group_by(bucket, r.series, r.agent_type, r.source, r.model)
        .order_by(bucket, r.series, r.agent_type, r.source, r.model)
    )
    await session.execute(insert(AnalyticsRollup).from_select([*KEY_COLUMNS, *COUNTERS], sel))
    h = AnalyticsHistogram
    hbucket = (h.bucket - (h.bucket % grain + grain) % grain).label("bucket")
    hsel = (
        select(
            literal(grain).label("grain"),
            hbucket,
            h.series,
            h.agent_type,
            h.source,
            h.model,
            h.kind,
            h.bin,
            func.sum(h.count).label("count"),
        )
        .where(h.grain == prev)
        .group_by(hbucket, h.series, h.agent_type, h.source, h.model, h.kind, h.bin)
        .order_by(hbucket, h.series, h.agent_type, h.source, h.model, h.kind, h.bin)
    )
    await session.execute(
        insert(AnalyticsHistogram).from_select([*HIST_KEY_COLUMNS, "count"], hsel)
    )


async def rollup_rows(session: AsyncSession) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Every non-zero rollup and histogram row, sorted (for comparing two states)."""
    r = await session.execute(
        select(*(getattr(AnalyticsRollup, c) for c in (*KEY_COLUMNS, *COUNTERS)))
    )
    h = await session.execute(
        select(*(getattr(AnalyticsHistogram, c) for c in (*HIST_KEY_COLUMNS, "count")))
    )
    rows = sorted(tuple(x) for x in r if any(x[len(KEY_COLUMNS) :]))
    hrows = sorted(tuple(x) for x in h if x[-1])
    return rows, hrows
