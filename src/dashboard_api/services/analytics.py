"""Analytics over a window of `created_at`: whole blocks from rollups, raw rows at the edges.

A window [from, to) is cut at the 15-minute boundaries inside it: the aligned middle is
summed from a few rollup blocks of nested grains, and the partial quarter-hour at each
end is read from the tasks table, either as its part inside the window (added) or as
the whole block minus the part outside it (subtracted), whichever is shorter before now
(`cover_window`), so a query's cost follows the window and not the number of tasks.
Unfiltered queries read the marginal series (one row per block, or per block and kind).
Percentiles come from histogram blocks of 4 hours and up (one packed row per block,
group and kind), the partial 4-hour blocks at the window's ends covered the same way
with their raw tasks binned in SQL; the rows are added up and walked here.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    CompoundSelect,
    Select,
    and_,
    bindparam,
    case,
    func,
    literal,
    or_,
    select,
    union_all,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard_api.db.dialect import (
    backend_of,
    bisect_instants,
    bisect_sql,
    in_int_pairs,
    in_ints,
    int_pairs_params,
    prepare_log_bin,
)
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
    block_start,
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


Ranges = list[tuple[datetime, datetime]]


@dataclass(frozen=True, slots=True)
class Cover:
    """[start, end) as whole blocks, plus raw ranges to add, minus raw ranges to subtract:
    every instant of the window is counted once, every other instant zero times."""

    add: Ranges
    sub: Ranges
    blocks: list[Block]

    def raw(self) -> Ranges:
        """Every raw range, merged: what to read from the tasks table."""
        return merge_ranges([*self.add, *self.sub])

    def sign(self, at: datetime) -> int:
        """-1 for a raw row created in a subtracted range, 1 otherwise."""
        return -1 if any(lo <= at < hi for lo, hi in self.sub) else 1


def _weight(lo: datetime, hi: datetime, now: datetime | None) -> timedelta:
    """How many tasks a raw range may hold, as a length of time: none are created after
    `now` (back-fills aside, which only make the choice less good, never wrong)."""
    if now is not None:
        hi = min(hi, now)
    return max(hi - lo, timedelta(0))


def cover_window(
    start: datetime,
    end: datetime,
    grains: Sequence[int] = GRAINS,
    *,
    now: datetime | None = None,
    within: tuple[datetime, datetime] | None = None,
) -> Cover:
    """Cover [start, end) with blocks of `grains` and as few raw rows as the finest grain
    allows: a partial block at an edge is read either as its part inside the window
    (raw rows added) or as the whole block minus the part outside (raw rows subtracted),
    whichever spans less time before `now`. A window ending now thus reads almost no raw
    rows at its end, and at most half a block at its start. Exact either way: the rows
    subtracted are exactly those the block counts outside the window. A whole block is
    used only if it lies inside `within` (histogram buckets: a block's sums go to one
    bucket, so it must not reach into the next)."""
    raw, blocks = split_window(start, end, grains)
    if not raw:
        return Cover([], [], blocks)
    unit = grains[0]
    add: Ranges = []
    sub: Ranges = []
    for lo, hi in raw:
        # The finest blocks this raw range touches: one, or two when it is the whole
        # window and straddles a block edge (then each side is decided on its own).
        try:
            mid = _at(block_start(lo, unit) + unit)
        except OverflowError:  # the last block before year 10000: read raw
            add.append((lo, hi))
            continue
        pieces = [(lo, mid), (mid, hi)] if mid < hi else [(lo, hi)]
        for a, b in pieces:
            bucket = block_start(a, unit)
            try:
                block_lo, block_hi = _at(bucket), _at(bucket + unit)
            except OverflowError:
                add.append((a, b))
                continue
            outside = [r for r in ((block_lo, a), (b, block_hi)) if r[0] < r[1]]
            fits = within is None or (within[0] <= block_lo and block_hi <= within[1])
            cost_in = _weight(a, b, now)
            cost_out = sum((_weight(x, y, now) for x, y in outside), timedelta(0))
            if fits and cost_out < cost_in:
                blocks.append((unit, bucket))
                sub.extend(outside)
            else:
                add.append((a, b))
    return Cover(add, sub, blocks)


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


def _counter_series(
    r: Any, filters: AnalyticsFilters, *, bound: bool = False
) -> list[ColumnElement[bool]]:
    """The rollup rows to sum: the overall marginal when unfiltered (one row per block);
    with `bound`, without the filters (the caller adds `_filter_clauses`)."""
    if filters.agent_type or filters.source:
        return [r.series == SERIES_ALL_MODELS, *([] if bound else filters.clauses(r))]
    return [r.series == SERIES_MARGINAL, r.agent_type == "", r.source == "", r.model == ""]


def _filter_clauses(table: Any, filters: AnalyticsFilters) -> list[ColumnElement[bool]]:
    """The filters as clauses bound at execution (`_filter_params`)."""
    out: list[ColumnElement[bool]] = []
    if filters.agent_type:
        out.append(table.agent_type.in_(bindparam("agent_types", expanding=True)))
    if filters.source:
        out.append(table.source.in_(bindparam("sources", expanding=True)))
    return out


def _filter_params(filters: AnalyticsFilters) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if filters.agent_type:
        out["agent_types"] = list(filters.agent_type)
    if filters.source:
        out["sources"] = list(filters.source)
    return out


# Block statements by (what, filters' shape), built once: their blocks and filters are
# bound at each execution (PostgreSQL). Building one cost as much as running it.
_BLOCK_STATEMENTS: dict[tuple[str, bool, bool], Any] = {}
BlocksWhere = Callable[[Any], ColumnElement[bool]]
FiltersWhere = Callable[[Any], list[ColumnElement[bool]]]


def _block_statement(
    session: AsyncSession,
    what: str,
    blocks: Sequence[Block],
    filters: AnalyticsFilters,
    build: Callable[[BlocksWhere, FiltersWhere], Any],
) -> tuple[Any, dict[str, Any]]:
    """`build(blocks, filters)` (a statement over the rows of a table that
    `blocks(table)` and `filters(table)` select) and its parameters: on PostgreSQL built
    once per shape, the blocks a join with array parameters (`in_int_pairs`); on SQLite
    built each time."""
    params = _filter_params(filters)

    def filtered(table: Any) -> list[ColumnElement[bool]]:
        return _filter_clauses(table, filters)

    if backend_of(session) != "postgresql":
        return build(lambda table: _blocks_clause(session, table, blocks), filtered), params
    key = (what, bool(filters.agent_type), bool(filters.source))
    stmt = _BLOCK_STATEMENTS.get(key)
    if stmt is None:

        def where(table: Any) -> ColumnElement[bool]:
            clause = in_int_pairs(session, table.grain, table.bucket, "blocks")
            assert clause is not None
            return clause

        stmt = _BLOCK_STATEMENTS[key] = build(where, filtered)
    return stmt, {**params, **int_pairs_params("blocks", blocks)}


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


# Raw-row statements by (ranges, filters' shape), built once; values bound per execution.
_RAW_STATEMENTS: dict[tuple[int, bool, bool], Any] = {}


def _raw_statement(n_ranges: int, filters: AnalyticsFilters) -> Any:
    key = (n_ranges, bool(filters.agent_type), bool(filters.source))
    stmt = _RAW_STATEMENTS.get(key)
    if stmt is None:
        at, ts = Task.created_at, Task.created_at.type
        window = or_(
            *(
                and_(at >= bindparam(f"lo{i}", type_=ts), at < bindparam(f"hi{i}", type_=ts))
                for i in range(n_ranges)
            )
        )
        stmt = select(*_RAW_COLUMNS).where(window, *_filter_clauses(Task, filters))
        _RAW_STATEMENTS[key] = stmt
    return stmt


async def _raw_rows(
    session: AsyncSession, ranges: Sequence[tuple[datetime, datetime]], filters: AnalyticsFilters
) -> Sequence[Any]:
    if not ranges:
        return []
    params = _filter_params(filters)
    for i, (lo, hi) in enumerate(ranges):
        params[f"lo{i}"], params[f"hi{i}"] = lo, hi
    conn = await session.connection()
    rows: Sequence[Any] = (await conn.execute(_raw_statement(len(ranges), filters), params)).all()
    return rows


def _signed(sign: int, values: list[int]) -> list[int]:
    return values if sign == 1 else [-v for v in values]


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
    session: AsyncSession,
    *,
    start: datetime,
    end: datetime,
    filters: AnalyticsFilters,
    now: datetime | None = None,
) -> Summary:
    """Totals of the tasks created in [start, end) (`now`: see `cover_window`)."""
    cover = cover_window(start, end, now=now)
    agg = Agg()
    if cover.blocks:
        r = AnalyticsRollup.__table__.c

        def build(where: BlocksWhere, filtered: FiltersWhere) -> Select[Any]:
            return select(*_sums(r)).where(
                *_counter_series(r, filters, bound=True), where(r), *filtered(r)
            )

        stmt, params = _block_statement(session, "summary", cover.blocks, filters, build)
        conn = await session.connection()
        agg.add_counters((await conn.execute(stmt, params)).one())
    for row in await _raw_rows(session, cover.raw(), filters):
        agg.add_counters(_signed(cover.sign(row.created_at), counters_of(row)))
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
_HISTOGRAM_INDEX = tuple(_C[name] for name in _HISTOGRAM_COUNTERS)


async def histogram(
    session: AsyncSession,
    *,
    start: datetime,
    end: datetime,
    period: Period,
    tz_name: str,
    filters: AnalyticsFilters,
    max_buckets: int,
    now: datetime | None = None,
) -> HistogramAnswer:
    """Tasks, outcomes, cost and tokens per local hour or day of `tz_name` (`now`: see
    `cover_window`)."""
    tz = parse_tz(tz_name)
    starts, last_end = bucket_starts(tz, period, start, end, max_buckets)
    ends = [*starts[1:], last_end]
    # One list of _HISTOGRAM_COUNTERS per bucket (720 objects cost more than the query).
    sums = [[0] * len(_HISTOGRAM_COUNTERS) for _ in starts]
    bounds = [epoch_seconds(at) for at in starts]
    add: Ranges = []
    sub: Ranges = []
    blocks: list[Block] = []
    grain = _common_grain(bounds[1:]) if len(starts) > 2 else None
    # With a grain that every inner bucket edge is a multiple of, the inner buckets are
    # one range of blocks of that grain, and only the first and last bucket are split.
    split = [0, len(starts) - 1] if grain else range(len(starts))
    for i in sorted(set(split)):
        part = cover_window(
            max(starts[i], start), min(ends[i], end), now=now, within=(starts[i], ends[i])
        )
        add.extend(part.add)
        sub.extend(part.sub)
        blocks.extend(part.blocks)
    cover = Cover(add, sub, blocks)
    r = AnalyticsRollup
    which: list[ColumnElement[bool]] = []
    if grain:
        which.append(and_(r.grain == grain, r.bucket >= bounds[1], r.bucket < bounds[-1]))
    if blocks:
        which.append(_blocks_clause(session, r, blocks))
    conds = (*_counter_series(r, filters), or_(*which)) if which else ()
    conn = await session.connection()
    local = bisect_sql(session, r.bucket, bounds)
    if local is not None:
        # One statement: the rollup rows and the raw rows (signed) of the window, summed
        # per local bucket in the database; one row per non-empty bucket.
        parts: list[Select[Any]] = []
        if which:
            parts.append(select(local, *(getattr(r, c) for c in _HISTOGRAM_COUNTERS)).where(*conds))
        if cover.add or cover.sub:
            parts.append(_raw_histogram_rows(session, cover, filters, starts))
        if parts:
            both = union_all(*parts).subquery()
            index_col, *values = both.c
            stmt = select(index_col, *(sql_cast(func.sum(v), BigInteger) for v in values))
            stmt = stmt.group_by(index_col)
            for index, *counts in await conn.execute(stmt):
                sums[index - 1] = counts
        return HistogramAnswer(period, tz_name, start, end, bounds, sums)
    if which:
        columns = [func.sum(getattr(r, c)) for c in _HISTOGRAM_COUNTERS]
        stmt = select(r.bucket, *columns).where(*conds).group_by(r.grain, r.bucket)
        for bucket, *values in await conn.execute(stmt):
            acc = sums[bisect.bisect_right(bounds, bucket) - 1]
            for k, v in enumerate(values):
                acc[k] += int(v)
    for row in await _raw_rows(session, cover.raw(), filters):
        acc = sums[bisect.bisect_right(starts, row.created_at) - 1]
        counters = counters_of(row)
        sign = cover.sign(row.created_at)
        for k, c in enumerate(_HISTOGRAM_INDEX):
            acc[k] += sign * counters[c]
    return HistogramAnswer(period, tz_name, start, end, bounds, sums)


def _raw_histogram_rows(
    session: AsyncSession, cover: Cover, filters: AnalyticsFilters, starts: Sequence[datetime]
) -> Select[Any]:
    """The cover's raw tasks as rows (local bucket, *_HISTOGRAM_COUNTERS), each counted
    -1 in a subtracted range (PostgreSQL: the bucket by `width_bucket` on the starts)."""
    t = Task
    window = or_(*(and_(t.created_at >= lo, t.created_at < hi) for lo, hi in cover.raw()))
    sign: ColumnElement[int] = (
        case(
            (or_(*(and_(t.created_at >= lo, t.created_at < hi) for lo, hi in cover.sub)), -1),
            else_=1,
        )
        if cover.sub
        else literal(1)
    )
    local = bisect_instants(session, t.created_at, starts)
    assert local is not None
    return select(
        local,
        sign,
        case((t.status == "completed", sign), else_=0),
        case((t.status == "failed", sign), else_=0),
        sign * t.cost_micros,
        sign * t.input_tokens,
        sign * t.output_tokens,
    ).where(window, *filters.clauses(t))


# Bucket starts (epoch seconds) as the API writes them: a moving window meets the same
# hours again and again, and formatting 720 of them cost more than the query. Bounded.
_TS_TEXT: dict[int, str] = {}
_TS_TEXT_MAX = 200_000


def _ts_text(epoch_s: int) -> str:
    text = _TS_TEXT.get(epoch_s)
    if text is None:
        if len(_TS_TEXT) >= _TS_TEXT_MAX:
            _TS_TEXT.clear()
        text = _TS_TEXT[epoch_s] = format_ts(_at(epoch_s))
    return text


@dataclass(frozen=True, slots=True)
class HistogramAnswer:
    """A histogram answer (schema `CostHistogram`), rendered straight to JSON: building
    and serializing 2,000 bucket models took longer than the query."""

    period: Period
    tz: str
    start: datetime
    end: datetime
    starts: list[int]  # epoch seconds
    sums: list[list[int]]  # _HISTOGRAM_COUNTERS of each bucket

    def json(self) -> bytes:
        return orjson.dumps(
            {
                "period": self.period,
                "tz": self.tz,
                "from": format_ts(self.start),
                "to": format_ts(self.end),
                "buckets": [
                    {
                        "start": _ts_text(at),
                        "tasks": tasks,
                        "completed": completed,
                        "failed": failed,
                        "cost_usd": micros_to_usd(cost),
                        "input_tokens": input_tokens,
                        "output_tokens": output_tokens,
                    }
                    for at, (tasks, completed, failed, cost, input_tokens, output_tokens) in zip(
                        self.starts, self.sums, strict=True
                    )
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
    session: AsyncSession,
    *,
    start: datetime,
    end: datetime,
    filters: AnalyticsFilters,
    now: datetime | None = None,
) -> Performance:
    """Outcomes, durations (with percentiles) and cost overall, per agent type, source, model
    (`now`: see `cover_window`)."""
    # Counters and histograms split the window differently: counters from 15 minutes up,
    # histograms from 4 hours up, each with raw rows at the edges.
    cover = cover_window(start, end, now=now)
    conn = await session.connection()
    combos: dict[tuple[str, str], Agg] = {}
    models: dict[str, Agg] = {}
    if cover.blocks:
        stmt, params = _block_statement(
            session, "counter_groups", cover.blocks, filters, _counter_groups
        )
        for part, agent_type, source, model, *values in await conn.execute(stmt, params):
            if part == 0:
                combos.setdefault((agent_type, source), Agg()).add_counters(values)
            else:
                models.setdefault(model, Agg()).add_counters(values)
    for row in await _raw_rows(session, cover.raw(), filters):
        values = _signed(cover.sign(row.created_at), counters_of(row))
        combos.setdefault((row.agent_type, row.source), Agg()).add_counters(values)
        models.setdefault(row.model or "", Agg()).add_counters(values)
    pct = await _percentiles(session, start, end, filters, now)

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


def _counter_groups(where: BlocksWhere, filtered: FiltersWhere) -> CompoundSelect[Any]:
    """The counters of some blocks in one statement (filters bound): rows (part,
    agent_type, source, model, *COUNTERS), part 0 per (agent_type, source), part 1 per
    model."""
    r = AnalyticsRollup.__table__.c
    empty = literal("")
    return union_all(
        select(literal(0), r.agent_type, r.source, empty, *_sums(r))
        .where(r.series == SERIES_ALL_MODELS, where(r), *filtered(r))
        .group_by(r.agent_type, r.source),
        select(literal(1), empty, empty, r.model, *_sums(r))
        .where(r.series == SERIES_PER_MODEL, where(r), *filtered(r))
        .group_by(r.model),
    )


_PERCENTS: tuple[tuple[int, int], ...] = (
    (KIND_DURATION, 50),
    (KIND_DURATION, 95),
    (KIND_FIRST_OUTPUT, 50),
)

# A histogram row's key as read: (series, agent_type, source, model, kind).
RowKey = tuple[int, str, str, str, int]


def _groups_of(key: RowKey) -> tuple[tuple[int, str], ...]:
    """The percentile groups a histogram row (or edge bin) adds to."""
    series, agent_type, source, model, _ = key
    if series in (SERIES_PER_MODEL, SERIES_MODEL_MARGINAL):
        return ((_MODEL, model),)
    if series == SERIES_ALL_MODELS:
        return ((_OVERALL, ""), (_AGENT, agent_type), (_SOURCE, source))
    # SERIES_MARGINAL: one row set per agent type, per source, and overall.
    if agent_type:
        return ((_AGENT, agent_type),)
    if source:
        return ((_SOURCE, source),)
    return ((_OVERALL, ""),)


async def _percentiles(
    session: AsyncSession,
    start: datetime,
    end: datetime,
    filters: AnalyticsFilters,
    now: datetime | None,
) -> Pct:
    """The log bin of each percentile of each group.

    The window's histogram is its whole blocks of 4 hours and up (one packed row per
    block, group and kind: ~550 rows for 30 days unfiltered), plus or minus the tasks of
    the partial 4-hour blocks at its ends (`cover_window`), binned and counted per bin in
    SQL. Rows are added up per stored key (one addition each), the few key sums into their
    groups, and each group's sum is walked for its percentiles.
    """
    cover = cover_window(start, end, HIST_GRAINS, now=now)
    per_key: dict[RowKey, BinSum] = {}
    conn = await session.connection()
    if cover.blocks:
        h = AnalyticsHistogram.__table__.c
        # Filtered: the groups are summed from the per-combination series; unfiltered:
        # the marginal series hold each group's bins directly.
        filtered = bool(filters.agent_type or filters.source)
        series = (
            (SERIES_ALL_MODELS, SERIES_PER_MODEL)
            if filtered
            else (SERIES_MARGINAL, SERIES_MODEL_MARGINAL)
        )

        def build(where: BlocksWhere, filtering: FiltersWhere) -> Select[Any]:
            columns = (h.series, h.agent_type, h.source, h.model, h.kind, h.bin_lo, h.counts)
            return select(*columns).where(h.series.in_(series), where(h), *filtering(h))

        stmt, params = _block_statement(session, "histogram_rows", cover.blocks, filters, build)
        rows = await conn.execute(stmt, params)
        for series_, agent_type, source, model, kind, bin_lo, counts in rows:
            key = (series_, agent_type, source, model, kind)
            acc = per_key.get(key)
            if acc is None:
                per_key[key] = acc = BinSum()
            acc.add_packed(bin_lo, counts)
    edge: dict[RowKey, dict[int, int]] = {}
    if cover.add or cover.sub:
        for part, agent_type, source, model, kind, index, count in await conn.execute(
            *await _edge_bins(session, cover, filters)
        ):
            series_ = SERIES_PER_MODEL if part else SERIES_ALL_MODELS
            bins = edge.setdefault((series_, agent_type, source, model, kind), {})
            bins[index] = bins.get(index, 0) + int(count)
    for key, bins in edge.items():
        per_key.setdefault(key, BinSum()).add(BinSum.of(bins))
    sums: dict[tuple[int, str, int], BinSum] = {}
    for key, acc in per_key.items():
        for dim, group in _groups_of(key):
            sums.setdefault((dim, group, key[4]), BinSum()).add(acc)
    out: Pct = {}
    for (dim, group, kind), acc in sums.items():
        lo, counts = acc.counts()
        percents = [p for k, p in _PERCENTS if k == kind]
        found = nearest_rank(lo, counts, percents)
        if found:
            picks = out.setdefault((dim, group), {})
            for percent, index in found.items():
                picks[(kind, percent)] = index
    return out


# Edge statements by shape (backend, raw ranges, subtracted ranges, filters): building
# one cost more than running it; the shape's values are bound at each execution.
_EDGE_STATEMENTS: dict[tuple[str, int, int, bool, bool], CompoundSelect[Any]] = {}


async def _edge_bins(
    session: AsyncSession, cover: Cover, filters: AnalyticsFilters
) -> tuple[CompoundSelect[Any], dict[str, Any]]:
    """The tasks of the cover's raw ranges counted per bin (those of subtracted ranges
    counted -1): a statement of rows (part, agent_type, source, model, kind, bin, count),
    part 0 per (agent_type, source) and part 1 per model, and its parameters.

    The edge tasks are read and binned once (a CTE) and grouped twice per kind, instead of
    reading them once per group and kind.
    """
    await prepare_log_bin(session, BIN_THRESHOLDS)
    ranges = cover.raw()
    shape = (
        backend_of(session),
        len(ranges),
        len(cover.sub),
        bool(filters.agent_type),
        bool(filters.source),
    )
    params: dict[str, Any] = {}
    for i, (lo, hi) in enumerate(ranges):
        params[f"lo{i}"], params[f"hi{i}"] = lo, hi
    for i, (lo, hi) in enumerate(cover.sub):
        params[f"sub_lo{i}"], params[f"sub_hi{i}"] = lo, hi
    if filters.agent_type:
        params["agent_types"] = list(filters.agent_type)
    if filters.source:
        params["sources"] = list(filters.source)
    stmt = _EDGE_STATEMENTS.get(shape)
    if stmt is None:
        stmt = _EDGE_STATEMENTS[shape] = _edge_statement(session, *shape[1:])
    return stmt, params


def _edge_statement(
    session: AsyncSession, n_ranges: int, n_sub: int, agent_types: bool, sources: bool
) -> CompoundSelect[Any]:
    at = Task.created_at
    ts = Task.created_at.type

    def within(prefix: str, i: int) -> ColumnElement[bool]:
        lo = bindparam(f"{prefix}lo{i}", type_=ts)
        hi = bindparam(f"{prefix}hi{i}", type_=ts)
        return and_(at >= lo, at < hi)

    conds: list[ColumnElement[bool]] = [or_(*(within("", i) for i in range(n_ranges)))]
    if agent_types:
        conds.append(Task.agent_type.in_(bindparam("agent_types", expanding=True)))
    if sources:
        conds.append(Task.source.in_(bindparam("sources", expanding=True)))
    sign: ColumnElement[int] = (
        case((or_(*(within("sub_", i) for i in range(n_sub))), -1), else_=1)
        if n_sub
        else literal(1)
    )
    (_, duration_bin, _), (_, first_bin, _) = hist_bins_sql(session)
    tasks = (
        select(
            Task.agent_type,
            Task.source,
            func.coalesce(Task.model, "").label("model"),
            duration_bin.label("b0"),
            first_bin.label("b1"),
            sign.label("sign"),
        )
        .where(*conds)
        .cte("edge_tasks")
    )
    empty = literal("")
    count = func.sum(tasks.c.sign)
    parts: list[Select[Any]] = []
    for kind, b in ((KIND_DURATION, tasks.c.b0), (KIND_FIRST_OUTPUT, tasks.c.b1)):
        parts.append(
            select(literal(0), tasks.c.agent_type, tasks.c.source, empty, literal(kind), b, count)
            .where(b.is_not(None))
            .group_by(tasks.c.agent_type, tasks.c.source, b)
        )
        parts.append(
            select(literal(1), empty, empty, tasks.c.model, literal(kind), b, count)
            .where(b.is_not(None))
            .group_by(tasks.c.model, b)
        )
    return union_all(*parts)
