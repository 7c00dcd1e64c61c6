"""Rebuilding the analytics rollups from the raw tasks, and reading their whole content.

`dashboard-api rollups rebuild`, the seed and the tests recompute every rollup and
histogram row from the tasks table: the finest blocks summed in SQL, the coarser grains
summed from them in staging tables, the histograms binned in SQL and packed here. The
incremental path (`rollups`, `fold`) must always end in the same rows
(`tests/analytics` checks it).
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    Column,
    MetaData,
    Select,
    Table,
    case,
    delete,
    func,
    insert,
    literal,
    select,
    text,
    union_all,
)
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard_api.db.dialect import dialect_of, int_list
from dashboard_api.db.models.analytics import (
    HISTOGRAMS_TABLE,
    PENDING_TABLE,
    ROLLUPS_TABLE,
    STATE_TABLE,
    AnalyticsHistogram,
    AnalyticsPending,
    AnalyticsRollup,
)
from dashboard_api.db.models.tasks import Task
from dashboard_api.services.analytics.bins import unpack
from dashboard_api.services.analytics.layout import (
    BIN_THRESHOLDS,
    COUNTERS,
    FAILURE_MARGINAL_SERIES,
    FAILURE_SERIES,
    FOLD_LOCK_KEY,
    GRAINS,
    HIST_GRAINS,
    HIST_ROW_KEY,
    HIST_VALUES,
    KEY_COLUMNS,
    KIND_DURATION,
    KIND_FIRST_OUTPUT,
    ROLLUP_VALUES,
    SERIES_ALL_MODELS,
    SERIES_MARGINAL,
    SERIES_MODEL_MARGINAL,
    SERIES_PER_MODEL,
    STATUS_INDEX,
)

_ROLLUPS = ROLLUPS_TABLE
_HIST = HISTOGRAMS_TABLE
_PENDING = PENDING_TABLE
_STATE = STATE_TABLE


def _status_count(status: str) -> Any:
    return func.coalesce(func.sum(case((Task.status == status, 1), else_=0)), 0)


async def rebuild_rollups(session: AsyncSession, *, bulk: bool = False) -> None:
    """Recompute every rollup from the raw tasks (in the caller's transaction).

    Writers of tasks wait until this transaction ends (at their insert into
    `analytics_pending`): their contributions then apply on top of a rebuild that already
    saw every task committed before it, and the pending rows of those it saw are dropped.
    Readers (analytics, list totals) keep reading the previous rollups meanwhile, unless
    `bulk`: then the tables are truncated and the counter table's key is built after the
    insert (PostgreSQL), several times faster, but readers wait too; for loads that hold
    the tasks table anyway (seed). Histograms are packed in Python and inserted in key
    order either way (~250,000 rows at 1M tasks).
    """
    dialect = dialect_of(session)
    # The fold's lock first: a fold holds pending rows and then takes rollup rows, the
    # reverse of the table locks below, so the two must never run at once.
    lock = dialect.advisory_xact_lock_sql(FOLD_LOCK_KEY)
    if lock is not None:
        await session.execute(lock)
    await dialect.lock_tables_exclusive(session, [_ROLLUPS.name, _HIST.name, _PENDING.name])
    if bulk:
        await dialect.clear_tables(session, [_HIST, _ROLLUPS, _PENDING])
    else:
        await session.execute(delete(AnalyticsPending))
        await session.execute(delete(AnalyticsHistogram))
        await session.execute(delete(AnalyticsRollup))
    await dialect.prepare_log_bin(session, BIN_THRESHOLDS)
    await dialect.prepare_large_sort(session)
    counters = _finest_counters(session)
    await _build(session, _ROLLUPS, ROLLUP_VALUES, GRAINS, counters, _COUNTER_MARGINALS, bulk)
    # Every `changes` restarts from the block's tasks: tokens read before this rebuild
    # must never match again (services/tasks/search.py).
    await dialect.upsert_add_many(session, _STATE, ["id"], ["rebuilds"], [(1, 1)])
    await _build_histograms(session)
    # Fresh planner statistics: without them PostgreSQL misjudges the block ranges.
    await dialect.analyze_tables(session, [_ROLLUPS.name, _HIST.name])


# (series summed, series written, agent_type, source, model): None keeps the column, ""
# writes '' (summed over it).
Marginal = tuple[int, int, str | None, str | None, str | None]
_COUNTER_MARGINALS: tuple[Marginal, ...] = (
    (SERIES_ALL_MODELS, SERIES_MARGINAL, "", "", ""),
    *((FAILURE_SERIES[r], FAILURE_MARGINAL_SERIES[r], "", "", "") for r in FAILURE_SERIES),
)


async def _build(
    session: AsyncSession,
    target: Table,
    values: Sequence[str],
    grains: Sequence[int],
    finest: Sequence[Select[Any]],
    marginals: Sequence[Marginal],
    bulk: bool,
) -> None:
    """Fill `target` (empty) with every grain, staged in unindexed temporary tables.

    Each grain is summed from the next finer one in its own small table, and `target`
    gets all rows in one insert sorted by block (a run of blocks then shares heap pages),
    in bulk with its primary key built afterwards on PostgreSQL. Inserting grain by grain
    into the indexed table, reading the finer grain back from it, took six times longer.
    """
    names = [c.name for c in target.columns]
    stages: list[Table] = []
    for i, grain in enumerate(grains):
        stage = Table(
            f"rebuild_{target.name}_{i}", MetaData(), *(Column(c.name, c.type) for c in target.c)
        )
        await session.execute(text(f'DROP TABLE IF EXISTS "{stage.name}"'))
        like = f'SELECT * FROM "{target.name}" WHERE 1 = 0'  # noqa: S608 - our names
        await session.execute(text(f'CREATE TEMPORARY TABLE "{stage.name}" AS {like}'))
        if i == 0:
            for sel in finest:
                await session.execute(insert(stage).from_select(names, sel))
            for plan in marginals:
                await session.execute(
                    insert(stage).from_select(names, _marginal(stage, values, plan))
                )
        else:
            await session.execute(
                insert(stage).from_select(names, _coarser(stages[-1], values, grain))
            )
        stages.append(stage)
    everything = union_all(*(select(*(st.c[n] for n in names)) for st in stages)).subquery()
    # Sorted by block only: a block's rows then share heap pages; sorting on the whole key
    # (three strings among eight columns) took six times longer for no fewer page reads.
    blocks = (everything.c.series, everything.c.grain, everything.c.bucket)
    ordered = select(*(everything.c[n] for n in names)).order_by(*blocks)
    dialect = dialect_of(session)
    dropped = bulk and await dialect.drop_primary_key(session, target)
    await session.execute(insert(target).from_select(names, ordered))
    if dropped:
        await dialect.add_primary_key(session, target)
    for stage in stages:
        await session.execute(text(f'DROP TABLE "{stage.name}"'))


_SERIES_MODELS: tuple[tuple[int, Any], ...] = (
    (SERIES_ALL_MODELS, literal("")),
    (SERIES_PER_MODEL, func.coalesce(Task.model, "")),
)


def _finest_counters(session: AsyncSession) -> list[Select[Any]]:
    bucket = dialect_of(session).epoch_bucket(Task.created_at, GRAINS[0]).label("bucket")
    sums = [
        func.count().label("tasks"),
        *(_status_count(s).label(s) for s in STATUS_INDEX),
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
        func.count().label("changes"),
    ]
    out = []
    for series, model_expr in _SERIES_MODELS:
        model = model_expr.label("model")
        out.append(
            select(
                literal(series).label("series"),
                literal(GRAINS[0]).label("grain"),
                bucket,
                Task.agent_type,
                Task.source,
                model,
                *sums,
            ).group_by(bucket, Task.agent_type, Task.source, model)
        )
    # The tasks with a failure reason once more, per reason and model: their series.
    model = func.coalesce(Task.model, "").label("model")
    out.append(
        select(
            case(FAILURE_SERIES, value=Task.failure_reason).label("series"),
            literal(GRAINS[0]).label("grain"),
            bucket,
            Task.agent_type,
            Task.source,
            model,
            *sums,
        )
        .where(Task.failure_reason.in_(list(FAILURE_SERIES)))
        .group_by(Task.failure_reason, bucket, Task.agent_type, Task.source, model)
    )
    return out


def hist_bins_sql(session: AsyncSession) -> list[tuple[int, Any, Any]]:
    """(kind, log bin of the task's value, whether the task has one) in SQL, for each kind
    (needs `prepare_log_bin` on the session's connection)."""
    dialect = dialect_of(session)
    first = dialect.micros_between(Task.first_output_at, Task.started_at)
    return [
        (
            KIND_DURATION,
            dialect.log_bin(Task.duration_us, BIN_THRESHOLDS),
            Task.duration_us.is_not(None),
        ),
        (
            KIND_FIRST_OUTPUT,
            dialect.log_bin(case((first < 0, 0), else_=first), BIN_THRESHOLDS),
            Task.first_output_at.is_not(None) & Task.started_at.is_not(None),
        ),
    ]


# Rows of a streamed query fetched at a time while the histograms are rebuilt.
_STREAM_ROWS = 20_000
_LANE = 64


async def _build_histograms(session: AsyncSession) -> None:
    """Fill the (empty) histogram table from the raw tasks.

    SQL counts the tasks per bin of each 1-hour block and (agent_type, source, model) and
    hands each such block's bins over as two lists; here they are packed and added up into
    every series and coarser grain, and the rows are inserted sorted by key (COPY on
    PostgreSQL), so that the primary key grows at its right edge. At 1M tasks: ~150,000
    finest blocks summed into ~250,000 rows in seconds.

    Every count here is positive, so a block's bins are one non-negative integer whose
    64-bit lanes are the bins from its lowest bin up: adding two blocks is one shift to
    align them and one integer addition, with no sign to handle (`bins.BinSum`
    handles signs too, for reads and writes).
    """
    grain = HIST_GRAINS[0]
    model = func.coalesce(Task.model, "").label("model")
    reason = func.coalesce(Task.failure_reason, "").label("failure_reason")
    finest: list[tuple[tuple[Any, ...], int, bytes]] = []  # (key, bin_lo, counts)
    conn = await session.connection()
    dialect = dialect_of(session)
    for kind, bin_expr, present in hist_bins_sql(session):
        bucket = dialect.epoch_bucket(Task.created_at, grain).label("bucket")
        b = bin_expr.label("bin")
        per_bin = (
            select(bucket, Task.agent_type, Task.source, model, reason, b, func.count().label("n"))
            .where(present)
            .group_by(bucket, Task.agent_type, Task.source, model, reason, b)
            .subquery()
        )
        c = per_bin.c
        stmt = (
            select(c.bucket, c.agent_type, c.source, c.model, c.failure_reason,
                   dialect.int_list_agg(c.bin), dialect.int_list_agg(c.n))
            .group_by(c.bucket, c.agent_type, c.source, c.model, c.failure_reason)
            .execution_options(yield_per=_STREAM_ROWS)
        )  # fmt: skip
        result = await conn.stream(stmt)
        async for part in result.partitions():
            for blk, agent_type, source, mdl, why, bins, counts in part:
                index, values = int_list(bins), int_list(counts)
                lo = min(index)
                dense = array("q", bytes(8 * (max(index) - lo + 1)))
                for i, n in zip(index, values, strict=True):
                    dense[i - lo] = n
                if sys.byteorder == "big":  # pragma: no cover
                    dense.byteswap()
                where = (blk, agent_type, source, mdl, why, kind)
                finest.append((where, lo, dense.tobytes()))
    if not finest:
        return
    # Each (block, agent_type, source, model, failure_reason) adds to the six series rows
    # it belongs to (seven with a failure reason). A row's sum is (its lowest bin, an
    # integer whose lanes are the bins from there up): aligned on each row's own lowest
    # bin, not on the lowest of all, so that no integer carries hundreds of empty low
    # lanes (the seed's peak memory).
    level: dict[tuple[Any, ...], tuple[int, int]] = {}
    for where, lo, data in finest:
        x = int.from_bytes(data, "little")
        for key in hist_series_keys(*where):
            level[key] = add_lanes(level.get(key), lo, x)
    finest.clear()
    out: list[tuple[Any, ...]] = []
    for i, g in enumerate(HIST_GRAINS):
        if i:
            coarser: dict[tuple[Any, ...], tuple[int, int]] = {}
            for (series, blk, a, s, m, kind), (lo, x) in level.items():
                key = (series, blk - blk % g, a, s, m, kind)
                coarser[key] = add_lanes(coarser.get(key), lo, x)
            level = coarser
        for (series, blk, a, s, m, kind), (lo, x) in level.items():
            out.append((series, g, blk, a, s, m, kind, *pack_lanes(lo, x)))
    out.sort(key=lambda r: r[:7])
    names = ("series", "grain", "bucket", "agent_type", "source", "model", "kind", *HIST_VALUES)
    await dialect_of(session).bulk_insert(session, _HIST, names, out)


def hist_series_keys(
    blk: int, agent_type: str, source: str, model: str, reason: str, kind: int
) -> list[tuple[Any, ...]]:
    """The histogram rows ((series, block, agent_type, source, model, kind)) that the
    tasks of one finest block and group add to (as `rollups.deltas` spreads them)."""
    keys: list[tuple[Any, ...]] = [
        (SERIES_PER_MODEL, blk, agent_type, source, model, kind),
        (SERIES_ALL_MODELS, blk, agent_type, source, "", kind),
        (SERIES_MARGINAL, blk, agent_type, "", "", kind),
        (SERIES_MARGINAL, blk, "", source, "", kind),
        (SERIES_MARGINAL, blk, "", "", "", kind),
        (SERIES_MODEL_MARGINAL, blk, "", "", model, kind),
    ]
    if reason in FAILURE_SERIES:
        keys.append((FAILURE_SERIES[reason], blk, agent_type, source, model, kind))
    return keys


def pack_lanes(lo: int, x: int) -> tuple[int, bytes]:
    """(bin_lo, counts) of a histogram row from (lowest bin, lanes): the lanes from the
    lowest non-zero one to the highest, as little-endian 64-bit integers."""
    first = ((x & -x).bit_length() - 1) // _LANE
    lanes = (x.bit_length() - 1) // _LANE - first + 1
    return lo + first, (x >> (_LANE * first)).to_bytes(8 * lanes, "little")


def add_lanes(acc: tuple[int, int] | None, lo: int, x: int) -> tuple[int, int]:
    """(lowest bin, lanes) of `acc` plus bins `x` from bin `lo` (lanes of non-negative
    counts: adding is one integer addition once both start at the same bin)."""
    if acc is None:
        return lo, x
    have_lo, have = acc
    if lo >= have_lo:
        return have_lo, have + (x << (_LANE * (lo - have_lo)))
    return lo, (have << (_LANE * (have_lo - lo))) + x


def _marginal(stage: Table, values: Sequence[str], plan: Marginal) -> Select[Any]:
    """Rows of series `plan[1]` summed from series `plan[0]` over the '' columns."""
    summed, series, *fixed = plan
    dims = [
        stage.c[name] if keep is None else literal(keep).label(name)
        for name, keep in zip(("agent_type", "source", "model"), fixed, strict=True)
    ]
    rest = [col for col in stage.c if col.name not in (*KEY_COLUMNS, *values)]
    kept = [
        stage.c[n]
        for n, keep in zip(("agent_type", "source", "model"), fixed, strict=True)
        if keep is None
    ]
    groups = [stage.c.grain, stage.c.bucket, *kept, *rest]
    return (
        select(
            literal(series).label("series"),
            stage.c.grain,
            stage.c.bucket,
            *dims,
            *rest,
            *(func.sum(stage.c[v]).label(v) for v in values),
        )
        .where(stage.c.series == summed)
        .group_by(*groups)
    )


def _coarser(stage: Table, values: Sequence[str], grain: int) -> Select[Any]:
    """The blocks of `grain` summed from the blocks of the finer grain in `stage`."""
    c = stage.c
    bucket = (c.bucket - (c.bucket % grain + grain) % grain).label("bucket")
    dims = [col for col in c if col.name not in ("series", "grain", "bucket", *values)]
    return select(
        c.series,
        literal(grain).label("grain"),
        bucket,
        *dims,
        *(func.sum(c[v]).label(v) for v in values),
    ).group_by(c.series, bucket, *dims)


async def rollup_rows(session: AsyncSession) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Every non-zero rollup row, and every non-zero histogram bin as a
    (*HIST_KEY_COLUMNS, count) row, sorted (for comparing two states: the logical content,
    whatever the packing)."""
    r = await session.execute(
        select(*(getattr(AnalyticsRollup, c) for c in (*KEY_COLUMNS, *COUNTERS)))
    )
    h = await session.execute(
        select(*(getattr(AnalyticsHistogram, c) for c in (*HIST_ROW_KEY, *HIST_VALUES)))
    )
    rows = sorted(tuple(x) for x in r if any(x[len(KEY_COLUMNS) :]))
    hrows = sorted(
        (*x[:-2], index, count) for x in h for index, count in unpack(x[-2], bytes(x[-1]))
    )
    return rows, hrows
