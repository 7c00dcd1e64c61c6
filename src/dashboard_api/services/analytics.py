"""Analytics over a window of `created_at`: whole blocks from rollups, raw rows at the edges.

A window [from, to) is cut at the 15-minute boundaries inside it: the aligned middle is
summed from a few rollup blocks of nested grains, and only the partial quarter-hours at
its two ends are read from the tasks table, so a query's cost follows the window and
not the number of tasks.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import ColumnElement, and_, func, literal, or_, select, union_all
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard_api.db.dialect import in_ints, prepare_log_bin
from dashboard_api.db.models.analytics import AnalyticsHistogram, AnalyticsRollup
from dashboard_api.db.models.tasks import Task
from dashboard_api.errors import Unprocessable
from dashboard_api.money import micros_to_usd
from dashboard_api.schemas.analytics import (
    AgentTypeMetrics,
    CostHistogram,
    HistogramBucket,
    Metrics,
    ModelMetrics,
    Performance,
    Period,
    SourceMetrics,
    Summary,
)
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
    hist_bins_sql,
    hist_points,
)

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
    """Counters (in COUNTERS order) and histogram counts {(kind, bin): n} of some tasks."""

    c: list[int] = field(default_factory=lambda: [0] * len(COUNTERS))
    hist: dict[tuple[int, int], int] = field(default_factory=dict)

    def add_counters(self, values: Iterable[Any]) -> None:
        for i, v in enumerate(values):
            self.c[i] += int(v or 0)

    def add_hist(self, kind: int, b: int, n: int) -> None:
        self.hist[(kind, b)] = self.hist.get((kind, b), 0) + int(n)

    def add_task(self, row: Any) -> None:
        self.add_counters(counters_of(row))
        for kind, b in hist_points(row):
            self.add_hist(kind, b, 1)

    def merge(self, other: Agg) -> None:
        self.add_counters(other.c)
        for (kind, b), n in other.hist.items():
            self.add_hist(kind, b, n)

    def __getitem__(self, name: str) -> int:
        return self.c[_C[name]]

    def percentile_seconds(self, kind: int, numerator: int, denominator: int) -> float | None:
        """Nearest-rank percentile numerator/denominator, from the log bins (within 2 %)."""
        bins = sorted((b, n) for (k, b), n in self.hist.items() if k == kind and n > 0)
        total = sum(n for _, n in bins)
        if total == 0:
            return None
        rank = max(1, -(-numerator * total // denominator))
        seen = 0
        for b, n in bins:
            seen += n
            if seen >= rank:
                return bin_value(b) / 1_000_000
        return bin_value(bins[-1][0]) / 1_000_000  # pragma: no cover - rank <= total


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


async def histogram(
    session: AsyncSession,
    *,
    start: datetime,
    end: datetime,
    period: Period,
    tz_name: str,
    filters: AnalyticsFilters,
    max_buckets: int,
) -> CostHistogram:
    """Tasks, outcomes, cost and tokens per local hour or day of `tz_name`."""
    tz = parse_tz(tz_name)
    starts, last_end = bucket_starts(tz, period, start, end, max_buckets)
    ends = [*starts[1:], last_end]
    aggs = [Agg() for _ in starts]
    raw: list[tuple[datetime, datetime]] = []
    where: dict[Block, int] = {}
    for i, (lo, hi) in enumerate(zip(starts, ends, strict=True)):
        r_parts, blocks = split_window(max(lo, start), min(hi, end))
        raw.extend(r_parts)
        for block in blocks:
            where[block] = i
    if where:
        r = AnalyticsRollup
        stmt = (
            select(r.grain, r.bucket, *_sums(r))
            .where(*_counter_series(r, filters), _blocks_clause(session, r, where))
            .group_by(r.grain, r.bucket)
        )
        for grain, bucket, *values in await session.execute(stmt):
            aggs[where[(grain, bucket)]].add_counters(values)
    for row in await _raw_rows(session, _merge_ranges(raw), filters):
        aggs[bisect.bisect_right(starts, row.created_at) - 1].add_task(row)
    return CostHistogram(
        period=period,
        tz=tz_name,
        from_=start,
        to=end,
        buckets=[
            HistogramBucket(
                start=at,
                tasks=a["tasks"],
                completed=a["completed"],
                failed=a["failed"],
                cost_usd=micros_to_usd(a["cost_micros"]),
                input_tokens=a["input_tokens"],
                output_tokens=a["output_tokens"],
            )
            for at, a in zip(starts, aggs, strict=True)
        ],
    )


def _merge_ranges(ranges: list[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    out: list[tuple[datetime, datetime]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _metrics(a: Agg) -> dict[str, Any]:
    return {
        "tasks": a["tasks"],
        "completed": a["completed"],
        "failed": a["failed"],
        "success_rate": _ratio(a["completed"], a["completed"] + a["failed"]),
        "avg_duration_seconds": _avg_seconds(a["duration_sum_us"], a["duration_count"]),
        "p50_duration_seconds": a.percentile_seconds(KIND_DURATION, 50, 100),
        "p95_duration_seconds": a.percentile_seconds(KIND_DURATION, 95, 100),
        "total_cost_usd": micros_to_usd(a["cost_micros"]),
        "avg_cost_usd": _avg_usd(a["cost_micros"], a["tasks"]),
        "input_tokens": a["input_tokens"],
        "output_tokens": a["output_tokens"],
        "p50_first_output_seconds": a.percentile_seconds(KIND_FIRST_OUTPUT, 50, 100),
    }


async def performance(
    session: AsyncSession, *, start: datetime, end: datetime, filters: AnalyticsFilters
) -> Performance:
    """Outcomes, durations (with percentiles) and cost overall, per agent type, source, model."""
    # Counters and histograms split the window differently: counters from 15 minutes up
    # (raw rows at the edges), histograms from the hour up (raw bins at the edges).
    raw, blocks = split_window(start, end)
    hist_raw, hist_blocks = split_window(start, end, HIST_GRAINS)
    filtered = bool(filters.agent_type or filters.source)
    combos: dict[tuple[str, str], Agg] = {}
    models: dict[str, Agg] = {}
    # Unfiltered, the marginal series give the histograms of each group directly.
    marginal_agents: dict[str, Agg] = {}
    marginal_sources: dict[str, Agg] = {}
    marginal_overall = Agg()

    def add_bins(agent_type: str, source: str, model: str, kind: int, b: int, n: int) -> None:
        models.setdefault(model, Agg()).add_hist(kind, b, n)
        if filtered:
            combos.setdefault((agent_type, source), Agg()).add_hist(kind, b, n)
        else:
            marginal_agents.setdefault(agent_type, Agg()).add_hist(kind, b, n)
            marginal_sources.setdefault(source, Agg()).add_hist(kind, b, n)
            marginal_overall.add_hist(kind, b, n)

    r, h = AnalyticsRollup, AnalyticsHistogram
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
        for agent_type, source, *values in await session.execute(stmt):
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
        for model, *values in await session.execute(stmt):
            models.setdefault(model, Agg()).add_counters(values)
    if hist_blocks and filtered:
        hstmt = (
            select(h.agent_type, h.source, h.kind, h.bin, func.sum(h.count))
            .where(
                h.series == SERIES_ALL_MODELS,
                _blocks_clause(session, h, hist_blocks),
                *filters.clauses(h),
            )
            .group_by(h.agent_type, h.source, h.kind, h.bin)
        )
        for agent_type, source, kind, b, n in await session.execute(hstmt):
            combos.setdefault((agent_type, source), Agg()).add_hist(kind, b, n)
        mstmt = (
            select(h.model, h.kind, h.bin, func.sum(h.count))
            .where(
                h.series == SERIES_PER_MODEL,
                _blocks_clause(session, h, hist_blocks),
                *filters.clauses(h),
            )
            .group_by(h.model, h.kind, h.bin)
        )
        for model, kind, b, n in await session.execute(mstmt):
            models.setdefault(model, Agg()).add_hist(kind, b, n)
    elif hist_blocks:
        marg = (
            select(h.series, h.agent_type, h.source, h.model, h.kind, h.bin, func.sum(h.count))
            .where(
                h.series.in_((SERIES_MARGINAL, SERIES_MODEL_MARGINAL)),
                _blocks_clause(session, h, hist_blocks),
            )
            .group_by(h.series, h.agent_type, h.source, h.model, h.kind, h.bin)
        )
        for series, agent_type, source, model, kind, b, n in await session.execute(marg):
            if series == SERIES_MODEL_MARGINAL:
                target = models.setdefault(model, Agg())
            elif agent_type:
                target = marginal_agents.setdefault(agent_type, Agg())
            elif source:
                target = marginal_sources.setdefault(source, Agg())
            else:
                target = marginal_overall
            target.add_hist(kind, b, n)
    for row in await _raw_rows(session, raw, filters):
        values = counters_of(row)
        combos.setdefault((row.agent_type, row.source), Agg()).add_counters(values)
        models.setdefault(row.model or "", Agg()).add_counters(values)
    for agent_type, source, model, kind, b, n in await _raw_bins(session, hist_raw, filters):
        add_bins(agent_type, source, model, kind, b, n)

    overall = marginal_overall
    agents = marginal_agents
    sources = marginal_sources
    for (agent_type, source), agg in combos.items():
        overall.merge(agg)
        agents.setdefault(agent_type, Agg()).merge(agg)
        sources.setdefault(source, Agg()).merge(agg)
    return Performance(
        from_=start,
        to=end,
        overall=Metrics(**_metrics(overall)),
        by_agent_type=[
            AgentTypeMetrics(agent_type=k, **_metrics(a))
            for k, a in sorted(agents.items())
            if a["tasks"]
        ],
        by_source=[
            SourceMetrics(source=k, **_metrics(a)) for k, a in sorted(sources.items()) if a["tasks"]
        ],
        by_model=[
            ModelMetrics(model=k or None, **_metrics(a))
            for k, a in sorted(models.items())
            if a["tasks"]
        ],
    )


async def _raw_bins(
    session: AsyncSession, ranges: Sequence[tuple[datetime, datetime]], filters: AnalyticsFilters
) -> Sequence[Any]:
    """(agent_type, source, model, kind, bin, count) of the tasks in `ranges`, binned in SQL."""
    if not ranges:
        return []
    await prepare_log_bin(session, BIN_THRESHOLDS)
    window = or_(*(and_(Task.created_at >= lo, Task.created_at < hi) for lo, hi in ranges))
    model = func.coalesce(Task.model, "").label("model")
    parts = []
    for kind, bin_expr, present in hist_bins_sql(session):
        b = bin_expr.label("bin")
        parts.append(
            select(Task.agent_type, Task.source, model, literal(kind), b, func.count())
            .where(window, present, *filters.clauses(Task))
            .group_by(Task.agent_type, Task.source, model, b)
        )
    return (await session.execute(union_all(*parts))).all()
