"""Analytics over a window of `created_at`: whole blocks from rollups, raw rows at the edges.

A window [from, to) is cut at the 15-minute boundaries inside it: the aligned middle is
summed from a few rollup blocks of nested grains, and only the partial quarter-hours at
its two ends are read from the tasks table, so a query's cost follows the window and
not the number of tasks. Unfiltered queries read the marginal series (one row per
block, or per block and kind). Percentiles come from histogram blocks of 4 hours and up
(one packed row per block, group and kind), with the tasks of the partial 4-hour blocks
at the window's ends binned on the fly in SQL; the rows are added up and walked here.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
from sqlalchemy import (
    ColumnElement,
    CompoundSelect,
    Select,
    and_,
    func,
    literal,
    literal_column,
    or_,
    select,
    union_all,
)
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard_api.db.dialect import bisect_sql, in_ints, prepare_log_bin
from dashboard_api.db.models.analytics import AnalyticsHistogram, AnalyticsRollup
from dashboard_api.db.models.tasks import Task
from dashboard_api.errors import Unprocessable
from dashboard_api.money import micros_to_usd
from dashboard_api.schemas.analytics import (
    AgentTypeMetrics,
    Metrics,
    ModelMetrics,
    Performance,
    Period,
    SourceMetrics,
    Summary,
)
from dashboard_api.services.analytics_bins import BinSum, nearest_rank
from dashboard_api.services.analytics_rollups import (
    BIN_THRESHOLDS,
    COUNTERS,
    EPOCH,
    GRAINS,
    HIST_GRAINS,
    KIND_DURATION,
    KIND_FIRST_OUTPUT,
    QUARTER,
    SERIES_ALL_MODELS,
    SERIES_MARGINAL,
    SERIES_MODEL_MARGINAL,
    SERIES_PER_MODEL,
    bin_value,
    counters_of,
    epoch_seconds,
    hist_bins_sql,
)
from dashboard_api.timeutil import format_ts, merge_ranges

_C = {name: i for i, name in enumerate(COUNTERS)}
_US = timedelta(microseconds=1)
_QUARTER_US = QUARTER * 1_000_000

Block = tuple[int, int]  # (grain seconds, bucket start in epoch seconds)


@dataclass(frozen=True, slots=True)
class AnalyticsFilters:
    """The common filters: repeatable agent types and sources (empty: all)."""

    agent_type: Sequence[str] = ()
    source: Sequence[str] = ()

    def clauses(self, table: Any) -> list[ColumnElement[bool]]:
        out: list[ColumnElement[bool]] = []
        if self.agent_type:
            out.append(table.agent_type.in_(list(self.agent_type)))
        if self.source:
            out.append(table.source.in_(list(self.source)))
        return out


@dataclass(slots=True)
class Agg:
    """Counters (in COUNTERS order) of some tasks."""

    c: list[int] = field(default_factory=lambda: [0] * len(COUNTERS))

    def add_counters(self, values: Iterable[Any]) -> None:
        for i, v in enumerate(values):
            self.c[i] += int(v or 0)

    def add_task(self, row: Any) -> None:
        self.add_counters(counters_of(row))

    def add_named(self, names: Sequence[str], values: Iterable[Any]) -> None:
        for name, v in zip(names, values, strict=True):
            self.c[_C[name]] += int(v or 0)

    def merge(self, other: Agg) -> None:
        self.add_counters(other.c)

    def __getitem__(self, name: str) -> int:
        return self.c[_C[name]]


# --- windows and blocks ------------------------------------------------------------------


def _at(epoch_s: int) -> datetime:
    return EPOCH + timedelta(seconds=epoch_s)


def decompose(start_s: int, end_s: int, grains: Sequence[int] = GRAINS) -> list[Block]:
    """Cover [start_s, end_s) (multiples of grains[0]) with the fewest nested blocks."""
    out: list[Block] = []
    pos = start_s
    while pos < end_s:
        grain = grains[0]
        for g in reversed(grains):
            if pos % g == 0 and pos + g <= end_s:
                grain = g
                break
        out.append((grain, pos))
        pos += grain
    return out


def split_window(
    start: datetime, end: datetime, grains: Sequence[int] = GRAINS
) -> tuple[list[tuple[datetime, datetime]], list[Block]]:
    """Raw edge ranges and whole blocks of `grains` that cover [start, end) exactly once."""
    if start >= end:
        return [], []
    unit = grains[0]
    unit_us = unit * 1_000_000
    start_us = (start - EPOCH) // _US
    end_us = (end - EPOCH) // _US
    a = -(-start_us // unit_us) * unit
    b = end_us // unit_us * unit
    if a >= b:
        return [(start, end)], []
    raw: list[tuple[datetime, datetime]] = []
    if start < _at(a):
        raw.append((start, _at(a)))
    if _at(b) < end:
        raw.append((_at(b), end))
    return raw, decompose(a, b, grains)


# A run of at least this many consecutive blocks of one grain is read as a range; shorter
# ones as a list (an OR of hundreds of short ranges would cost more to plan than to run).
_RANGE_RUN = 16


def _blocks_clause(
    session: AsyncSession, table: Any, blocks: Iterable[Block]
) -> ColumnElement[bool]:
    by_grain: dict[int, list[int]] = {}
    for grain, bucket in blocks:
        by_grain.setdefault(grain, []).append(bucket)
    parts: list[ColumnElement[bool]] = []
    for grain, buckets in sorted(by_grain.items()):
        buckets.sort()
        runs: list[list[int]] = []
        for bucket in buckets:
            if runs and bucket == runs[-1][1] + grain:
                runs[-1][1] = bucket
            else:
                runs.append([bucket, bucket])
        singles: list[int] = []
        conds: list[ColumnElement[bool]] = []
        for lo, hi in runs:
            if (hi - lo) // grain + 1 >= _RANGE_RUN:
                conds.append(and_(table.bucket >= lo, table.bucket <= hi))
            else:
                singles.extend(range(lo, hi + grain, grain))
        if singles:
            conds.append(in_ints(session, table.bucket, singles))
        parts.append(and_(table.grain == grain, or_(*conds)))
    return or_(*parts)


def _counter_series(r: Any, filters: AnalyticsFilters) -> list[ColumnElement[bool]]:
    """The rollup rows to sum: the overall marginal when unfiltered (one row per block)."""
    if filters.agent_type or filters.source:
        return [r.series == SERIES_ALL_MODELS, *filters.clauses(r)]
    return [r.series == SERIES_MARGINAL, r.agent_type == "", r.source == "", r.model == ""]


_RAW_COLUMNS = (
    Task.created_at,
    Task.status,
    Task.agent_type,
    Task.source,
    Task.model,
    Task.cost_micros,
    Task.input_tokens,
    Task.output_tokens,
    Task.cache_read_tokens,
    Task.cache_write_tokens,
    Task.duration_us,
    Task.started_at,
    Task.first_output_at,
)


async def _raw_rows(
    session: AsyncSession, ranges: Sequence[tuple[datetime, datetime]], filters: AnalyticsFilters
) -> Sequence[Any]:
    if not ranges:
        return []
    window = or_(*(and_(Task.created_at >= lo, Task.created_at < hi) for lo, hi in ranges))
    stmt = select(*_RAW_COLUMNS).where(window, *filters.clauses(Task))
    return (await session.execute(stmt)).all()


def _sums(table: Any) -> list[Any]:
    return [func.coalesce(func.sum(getattr(table, c)), 0) for c in COUNTERS]


# --- figures -----------------------------------------------------------------------------


def _ratio(num: int, den: int) -> float | None:
    return None if den == 0 else num / den


def _avg_usd(micros: int, count: int) -> float | None:
    return None if count == 0 else float(Decimal(micros) / count / 1_000_000)


def _avg_seconds(sum_us: int, count: int) -> float | None:
    return None if count == 0 else sum_us / count / 1_000_000


async def summary(
    session: AsyncSession, *, start: datetime, end: datetime, filters: AnalyticsFilters
) -> Summary:
    """Totals of the tasks created in [start, end)."""
    raw, blocks = split_window(start, end)
    agg = Agg()
    if blocks:
        r = AnalyticsRollup
        stmt = select(*_sums(r)).where(
            *_counter_series(r, filters), _blocks_clause(session, r, blocks)
        )
        agg.add_counters((await session.execute(stmt)).one())
    for row in await _raw_rows(session, raw, filters):
        agg.add_task(row)
    tasks = agg["tasks"]
    days = (end - start) / timedelta(days=1)
    return Summary(
        from_=start,
        to=end,
        total_tasks=tasks,
        queued_tasks=agg["queued"],
        running_tasks=agg["running"],
        completed_tasks=agg["completed"],
        failed_tasks=agg["failed"],
        cancelled_tasks=agg["cancelled"],
        total_cost_usd=micros_to_usd(agg["cost_micros"]),
        avg_cost_per_task_usd=_avg_usd(agg["cost_micros"], tasks),
        input_tokens=agg["input_tokens"],
        output_tokens=agg["output_tokens"],
        cache_read_tokens=agg["cache_read_tokens"],
        cache_write_tokens=agg["cache_write_tokens"],
        total_tokens=agg["input_tokens"] + agg["output_tokens"],
        success_rate=_ratio(agg["completed"], agg["completed"] + agg["failed"]),
        avg_duration_seconds=_avg_seconds(agg["duration_sum_us"], agg["duration_count"]),
        tasks_per_day=tasks / days,
    )


def parse_tz(name: str) -> ZoneInfo:
    """The IANA zone, or 422."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise Unprocessable(f"Unknown time zone {name!r}.", loc=["query", "tz"]) from None


def _boundaries(tz: ZoneInfo, period: Period, start: datetime) -> Iterator[datetime]:
    """Local period starts (as UTC instants) from the one holding `start`, increasing."""
    local = start.astimezone(tz)
    if period == "day":
        day = local.date()
        last: datetime | None = None
        while True:
            at = datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC)
            # A day that a zone skipped entirely (Samoa, 2011-12-30) maps onto the next.
            if last is None or at > last:
                yield at
                last = at
            day += timedelta(days=1)
    at = local.replace(minute=0, second=0, microsecond=0).astimezone(UTC)
    while True:
        yield at
        nxt = at + timedelta(hours=1)
        loc = nxt.astimezone(tz)
        if loc.minute or loc.second or loc.microsecond:
            # The offset moved by a fraction of an hour: go back to the local hour.
            back = nxt - timedelta(minutes=loc.minute, seconds=loc.second)
            nxt = back if back > at else back + timedelta(hours=1)
        at = nxt


def bucket_starts(
    tz: ZoneInfo, period: Period, start: datetime, end: datetime, max_buckets: int
) -> tuple[list[datetime], datetime]:
    """The histogram's bucket starts and the end of its last bucket; 422 when too many."""
    starts: list[datetime] = []
    try:
        for at in _boundaries(tz, period, start):
            if at >= end:
                return starts, at
            if len(starts) == max_buckets:
                raise Unprocessable(
                    f"The window holds more than {max_buckets} {period} buckets; "
                    "narrow it or use a longer period.",
                    loc=["query", "period"],
                )
            starts.append(at)
    except OverflowError:
        # A bucket edge past year 9999 (or before year 1) in this zone.
        raise Unprocessable(
            "The window reaches the limits of the calendar.", loc=["query", "to"]
        ) from None
    raise AssertionError("unreachable")  # pragma: no cover


def _common_grain(edges: Sequence[int]) -> int | None:
    """The coarsest grain that every edge (epoch seconds) is a multiple of, if any."""
    common = math.gcd(*edges)
    return next((g for g in reversed(GRAINS) if common % g == 0), None)


# What a histogram bucket shows: the other counters are not read.
_HISTOGRAM_COUNTERS = (
    "tasks",
    "completed",
    "failed",
    "cost_micros",
    "input_tokens",
    "output_tokens",
)


async def histogram(
    session: AsyncSession,
    *,
    start: datetime,
    end: datetime,
    period: Period,
    tz_name: str,
    filters: AnalyticsFilters,
    max_buckets: int,
) -> HistogramAnswer:
    """Tasks, outcomes, cost and tokens per local hour or day of `tz_name`."""
    tz = parse_tz(tz_name)
    starts, last_end = bucket_starts(tz, period, start, end, max_buckets)
    ends = [*starts[1:], last_end]
    aggs = [Agg() for _ in starts]
    bounds = [epoch_seconds(at) for at in starts]
    raw: list[tuple[datetime, datetime]] = []
    blocks: list[Block] = []
    grain = _common_grain(bounds[1:]) if len(starts) > 2 else None
    # With a grain that every inner bucket edge is a multiple of, the inner buckets are
    # one range of blocks of that grain, and only the first and last bucket are split.
    split = [0, len(starts) - 1] if grain else range(len(starts))
    for i in sorted(set(split)):
        r_parts, parts = split_window(max(starts[i], start), min(ends[i], end))
        raw.extend(r_parts)
        blocks.extend(parts)
    r = AnalyticsRollup
    which: list[ColumnElement[bool]] = []
    if grain:
        which.append(and_(r.grain == grain, r.bucket >= bounds[1], r.bucket < bounds[-1]))
    if blocks:
        which.append(_blocks_clause(session, r, blocks))
    if which:
        sums = [func.sum(getattr(r, c)) for c in _HISTOGRAM_COUNTERS]
        conds = (*_counter_series(r, filters), or_(*which))
        local = bisect_sql(session, r.bucket, bounds)
        conn = await session.connection()
        if local is not None:
            # Summed per local bucket in the database: one row per non-empty bucket.
            stmt = select(local.label("i"), *sums).where(*conds).group_by(literal_column("i"))
            for i, *values in await conn.execute(stmt):
                aggs[i - 1].add_named(_HISTOGRAM_COUNTERS, values)
        else:
            stmt = select(r.bucket, *sums).where(*conds).group_by(r.grain, r.bucket)
            for bucket, *values in await conn.execute(stmt):
                aggs[bisect.bisect_right(bounds, bucket) - 1].add_named(_HISTOGRAM_COUNTERS, values)
    for row in await _raw_rows(session, merge_ranges(raw), filters):
        aggs[bisect.bisect_right(starts, row.created_at) - 1].add_task(row)
    return HistogramAnswer(period, tz_name, start, end, starts, aggs)


@dataclass(frozen=True, slots=True)
class HistogramAnswer:
    """A histogram answer (schema `CostHistogram`), rendered straight to JSON: building
    and serializing 2,000 bucket models took longer than the query."""

    period: Period
    tz: str
    start: datetime
    end: datetime
    starts: list[datetime]
    aggs: list[Agg]

    def json(self) -> bytes:
        return orjson.dumps(
            {
                "period": self.period,
                "tz": self.tz,
                "from": format_ts(self.start),
                "to": format_ts(self.end),
                "buckets": [
                    {
                        "start": format_ts(at),
                        "tasks": a["tasks"],
                        "completed": a["completed"],
                        "failed": a["failed"],
                        "cost_usd": micros_to_usd(a["cost_micros"]),
                        "input_tokens": a["input_tokens"],
                        "output_tokens": a["output_tokens"],
                    }
                    for at, a in zip(self.starts, self.aggs, strict=True)
                ],
            }
        )


# Percentile groups of `performance`: (dimension, key).
_OVERALL, _AGENT, _SOURCE, _MODEL = 0, 1, 2, 3
Pct = dict[tuple[int, str], dict[tuple[int, int], int]]  # group -> {(kind, percent): bin}


def _metrics(a: Agg, pct: dict[tuple[int, int], int]) -> dict[str, Any]:
    def seconds(kind: int, percent: int) -> float | None:
        b = pct.get((kind, percent))
        return None if b is None else bin_value(b) / 1_000_000

    return {
        "tasks": a["tasks"],
        "completed": a["completed"],
        "failed": a["failed"],
        "success_rate": _ratio(a["completed"], a["completed"] + a["failed"]),
        "avg_duration_seconds": _avg_seconds(a["duration_sum_us"], a["duration_count"]),
        "p50_duration_seconds": seconds(KIND_DURATION, 50),
        "p95_duration_seconds": seconds(KIND_DURATION, 95),
        "total_cost_usd": micros_to_usd(a["cost_micros"]),
        "avg_cost_usd": _avg_usd(a["cost_micros"], a["tasks"]),
        "input_tokens": a["input_tokens"],
        "output_tokens": a["output_tokens"],
        "p50_first_output_seconds": seconds(KIND_FIRST_OUTPUT, 50),
    }


async def performance(
    session: AsyncSession, *, start: datetime, end: datetime, filters: AnalyticsFilters
) -> Performance:
    """Outcomes, durations (with percentiles) and cost overall, per agent type, source, model."""
    # Counters and histograms split the window differently: counters from 15 minutes up
    # (raw rows at the edges), histograms from 4 hours up (raw bins at the edges).
    raw, blocks = split_window(start, end)
    conn = await session.connection()
    combos: dict[tuple[str, str], Agg] = {}
    models: dict[str, Agg] = {}
    r = AnalyticsRollup.__table__.c
    if blocks:
        stmt = (
            select(r.agent_type, r.source, *_sums(r))
            .where(
                r.series == SERIES_ALL_MODELS,
                _blocks_clause(session, r, blocks),
                *filters.clauses(r),
            )
            .group_by(r.agent_type, r.source)
        )
        for agent_type, source, *values in await conn.execute(stmt):
            combos.setdefault((agent_type, source), Agg()).add_counters(values)
        stmt = (
            select(r.model, *_sums(r))
            .where(
                r.series == SERIES_PER_MODEL,
                _blocks_clause(session, r, blocks),
                *filters.clauses(r),
            )
            .group_by(r.model)
        )
        for model, *values in await conn.execute(stmt):
            models.setdefault(model, Agg()).add_counters(values)
    for row in await _raw_rows(session, raw, filters):
        values = counters_of(row)
        combos.setdefault((row.agent_type, row.source), Agg()).add_counters(values)
        models.setdefault(row.model or "", Agg()).add_counters(values)
    pct = await _percentiles(session, start, end, filters)

    overall = Agg()
    agents: dict[str, Agg] = {}
    sources: dict[str, Agg] = {}
    for (agent_type, source), agg in combos.items():
        overall.merge(agg)
        agents.setdefault(agent_type, Agg()).merge(agg)
        sources.setdefault(source, Agg()).merge(agg)
    return Performance(
        from_=start,
        to=end,
        overall=Metrics(**_metrics(overall, pct.get((_OVERALL, ""), {}))),
        by_agent_type=[
            AgentTypeMetrics(agent_type=k, **_metrics(a, pct.get((_AGENT, k), {})))
            for k, a in sorted(agents.items())
            if a["tasks"]
        ],
        by_source=[
            SourceMetrics(source=k, **_metrics(a, pct.get((_SOURCE, k), {})))
            for k, a in sorted(sources.items())
            if a["tasks"]
        ],
        by_model=[
            ModelMetrics(model=k or None, **_metrics(a, pct.get((_MODEL, k), {})))
            for k, a in sorted(models.items())
            if a["tasks"]
        ],
    )


_PERCENTS: tuple[tuple[int, int], ...] = (
    (KIND_DURATION, 50),
    (KIND_DURATION, 95),
    (KIND_FIRST_OUTPUT, 50),
)


async def _percentiles(
    session: AsyncSession, start: datetime, end: datetime, filters: AnalyticsFilters
) -> Pct:
    """The log bin of each percentile of each group.

    The window's histogram is its whole blocks of 4 hours and up (one packed row per
    block, group and kind: ~550 rows for 30 days unfiltered) plus the tasks of the
    partial 4-hour blocks at its ends, binned and counted per bin in SQL. Both are added
    up here per (group, kind), and each sum is walked for its percentiles.
    """
    raw, blocks = split_window(start, end, HIST_GRAINS)
    sums: dict[tuple[int, str, int], BinSum] = {}

    def add(dim: int, key: str, kind: int) -> BinSum:
        acc = sums.get((dim, key, kind))
        if acc is None:
            sums[(dim, key, kind)] = acc = BinSum()
        return acc

    conn = await session.connection()
    h = AnalyticsHistogram.__table__.c
    columns = (h.series, h.agent_type, h.source, h.model, h.kind, h.bin_lo, h.counts)
    if blocks and (filters.agent_type or filters.source):
        # Filtered: the groups are summed from the per-combination series.
        stmt = select(*columns).where(
            h.series.in_((SERIES_ALL_MODELS, SERIES_PER_MODEL)),
            _blocks_clause(session, h, blocks),
            *filters.clauses(h),
        )
        for series, agent_type, source, model, kind, bin_lo, counts in await conn.execute(stmt):
            if series == SERIES_PER_MODEL:
                add(_MODEL, model, kind).add_packed(bin_lo, counts)
            else:
                add(_OVERALL, "", kind).add_packed(bin_lo, counts)
                add(_AGENT, agent_type, kind).add_packed(bin_lo, counts)
                add(_SOURCE, source, kind).add_packed(bin_lo, counts)
    elif blocks:
        # Unfiltered: the marginal series hold each group's bins directly.
        stmt = select(*columns).where(
            h.series.in_((SERIES_MARGINAL, SERIES_MODEL_MARGINAL)),
            _blocks_clause(session, h, blocks),
        )
        for series, agent_type, source, model, kind, bin_lo, counts in await conn.execute(stmt):
            if series == SERIES_MODEL_MARGINAL:
                group = (_MODEL, model)
            elif agent_type:
                group = (_AGENT, agent_type)
            elif source:
                group = (_SOURCE, source)
            else:
                group = (_OVERALL, "")
            add(*group, kind).add_packed(bin_lo, counts)
    if raw:
        edge: dict[tuple[int, str, int], dict[int, int]] = {}
        for part, agent_type, source, model, kind, index, count in await conn.execute(
            await _edge_bins(session, raw, filters)
        ):
            groups = (
                ((_MODEL, model),)
                if part
                else ((_OVERALL, ""), (_AGENT, agent_type), (_SOURCE, source))
            )
            for dim, key in groups:
                bins = edge.setdefault((dim, key, kind), {})
                bins[index] = bins.get(index, 0) + count
        for (dim, key, kind), bins in edge.items():
            add(dim, key, kind).add(BinSum.of(bins))
    out: Pct = {}
    for (dim, key, kind), acc in sums.items():
        lo, counts = acc.counts()
        percents = [p for k, p in _PERCENTS if k == kind]
        found = nearest_rank(lo, counts, percents)
        if found:
            picks = out.setdefault((dim, key), {})
            for percent, index in found.items():
                picks[(kind, percent)] = index
    return out


async def _edge_bins(
    session: AsyncSession, raw: Sequence[tuple[datetime, datetime]], filters: AnalyticsFilters
) -> CompoundSelect[Any]:
    """The tasks of the raw edge ranges counted per bin: rows (part, agent_type, source,
    model, kind, bin, count), part 0 per (agent_type, source) and part 1 per model.

    The edge tasks are read and binned once (a CTE) and grouped twice per kind, instead of
    reading them once per group and kind.
    """
    await prepare_log_bin(session, BIN_THRESHOLDS)
    window = or_(*(and_(Task.created_at >= lo, Task.created_at < hi) for lo, hi in raw))
    (_, duration_bin, _), (_, first_bin, _) = hist_bins_sql(session)
    tasks = (
        select(
            Task.agent_type,
            Task.source,
            func.coalesce(Task.model, "").label("model"),
            duration_bin.label("b0"),
            first_bin.label("b1"),
        )
        .where(window, *filters.clauses(Task))
        .cte("edge_tasks")
    )
    empty = literal("")
    parts: list[Select[Any]] = []
    for kind, b in ((KIND_DURATION, tasks.c.b0), (KIND_FIRST_OUTPUT, tasks.c.b1)):
        parts.append(
            select(literal(0), tasks.c.agent_type, tasks.c.source, empty, literal(kind), b,
                   func.count())
            .where(b.is_not(None))
            .group_by(tasks.c.agent_type, tasks.c.source, b)
        )  # fmt: skip
        parts.append(
            select(literal(1), empty, empty, tasks.c.model, literal(kind), b, func.count())
            .where(b.is_not(None))
            .group_by(tasks.c.model, b)
        )
    return union_all(*parts)
