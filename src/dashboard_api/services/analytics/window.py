"""Analytics over a window of `created_at`: whole blocks from rollups, raw rows at the edges.

A window [from, to) is cut at the 15-minute boundaries inside it: the aligned middle is
summed from a few rollup blocks of nested grains, and the partial quarter-hour at each
end is read from the tasks table, either as its part inside the window (added) or as
the whole block minus the part outside it (subtracted), whichever is shorter before now
(`cover_window`), so a query's cost follows the window and not the number of tasks.
Unfiltered queries read the marginal series (one row per block, or per block and kind).
Percentiles come from histogram blocks of 1 hour and up (one packed row per block,
group and kind), the partial 1-hour blocks at the window's ends covered the same way
with their raw tasks binned in SQL; the rows are added up and walked here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, and_, bindparam, case, func, literal, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard_api.db.dialect import Dialect, dialect_of, int_pairs_params
from dashboard_api.db.models.tasks import Task
from dashboard_api.services.analytics.fold import execute_folded
from dashboard_api.services.analytics.layout import (
    COUNTERS,
    EPOCH,
    FAILURE_MARGINAL_SERIES,
    FAILURE_SERIES,
    GRAINS,
    QUARTER,
    SERIES_ALL_MODELS,
    SERIES_MARGINAL,
    STATUS_INDEX,
    block_start,
    counters_of,
)
from dashboard_api.timeutil import merge_ranges

_C = {name: i for i, name in enumerate(COUNTERS)}
_US = timedelta(microseconds=1)
_QUARTER_US = QUARTER * 1_000_000

Block = tuple[int, int]  # (grain seconds, bucket start in epoch seconds)


@dataclass(frozen=True, slots=True)
class AnalyticsFilters:
    """The common filters: repeatable agent types, sources and failure reasons (empty:
    all). A failure reason selects rollup series (`failure_series`), not rows of a
    column: on tasks it is `task_clauses`."""

    agent_type: Sequence[str] = ()
    source: Sequence[str] = ()
    failure_reason: Sequence[str] = ()

    def clauses(self, table: Any) -> list[ColumnElement[bool]]:
        """The agent type and source filters, on the tasks or on rollup rows."""
        out: list[ColumnElement[bool]] = []
        if self.agent_type:
            out.append(table.agent_type.in_(list(self.agent_type)))
        if self.source:
            out.append(table.source.in_(list(self.source)))
        return out

    def task_clauses(self) -> list[ColumnElement[bool]]:
        """Every filter, on the tasks table."""
        out = self.clauses(Task)
        if self.failure_reason:
            out.append(Task.failure_reason.in_(list(self.failure_reason)))
        return out

    @property
    def by_dimension(self) -> bool:
        """Whether agent types or sources are filtered (rows per combination are read)."""
        return bool(self.agent_type or self.source)

    def failure_series(self, *, overall: bool) -> list[int]:
        """The series of the filtered failure reasons: per combination and model, or
        (`overall`) one row per block and reason."""
        series = FAILURE_MARGINAL_SERIES if overall else FAILURE_SERIES
        return [series[r] for r in self.failure_reason if r in series]

    def shape(self) -> tuple[bool, bool, bool]:
        """Which filters are set: statements are built once per shape."""
        return bool(self.agent_type), bool(self.source), bool(self.failure_reason)


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


def from_epoch(epoch_s: int) -> datetime:
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
    if start < from_epoch(a):
        raw.append((start, from_epoch(a)))
    if from_epoch(b) < end:
        raw.append((from_epoch(b), end))
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
            mid = from_epoch(block_start(lo, unit) + unit)
        except OverflowError:  # the last block before year 10000: read raw
            add.append((lo, hi))
            continue
        pieces = [(lo, mid), (mid, hi)] if mid < hi else [(lo, hi)]
        for a, b in pieces:
            bucket = block_start(a, unit)
            try:
                block_lo, block_hi = from_epoch(bucket), from_epoch(bucket + unit)
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


def blocks_clause(
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
            conds.append(dialect_of(session).in_ints(table.bucket, singles))
        parts.append(and_(table.grain == grain, or_(*conds)))
    return or_(*parts)


def counter_series(r: Any, filters: AnalyticsFilters) -> list[ColumnElement[bool]]:
    """The rollup rows to sum: the overall marginal when unfiltered (one row per block);
    by failure reason, the reasons' series (their overall rows unless agent types or
    sources are filtered too)."""
    dims = filters.clauses(r)
    if filters.failure_reason:
        return [r.series.in_(filters.failure_series(overall=not filters.by_dimension)), *dims]
    if filters.by_dimension:
        return [r.series == SERIES_ALL_MODELS, *dims]
    return [r.series == SERIES_MARGINAL, r.agent_type == "", r.source == "", r.model == ""]


def summed_series(filters: AnalyticsFilters) -> list[int]:
    """The series whose rows hold the filtered tasks once (`counter_series`, as a list)."""
    if filters.failure_reason:
        return filters.failure_series(overall=not filters.by_dimension)
    return [SERIES_ALL_MODELS if filters.by_dimension else SERIES_MARGINAL]


def filter_clauses(table: Any, filters: AnalyticsFilters) -> list[ColumnElement[bool]]:
    """The filters as clauses bound at execution (`filter_params`): agent types and
    sources on any table, failure reasons on the tasks table only (rollup rows are
    selected by series: "failure_series" holds the reasons' series per combination)."""
    out: list[ColumnElement[bool]] = []
    if filters.agent_type:
        out.append(table.agent_type.in_(bindparam("agent_types", expanding=True)))
    if filters.source:
        out.append(table.source.in_(bindparam("sources", expanding=True)))
    if filters.failure_reason and table is Task:
        out.append(Task.failure_reason.in_(bindparam("failure_reasons", expanding=True)))
    return out


def filter_params(filters: AnalyticsFilters) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if filters.agent_type:
        out["agent_types"] = list(filters.agent_type)
    if filters.source:
        out["sources"] = list(filters.source)
    if filters.failure_reason:
        out["failure_reasons"] = list(filters.failure_reason)
        out["failure_series"] = filters.failure_series(overall=False)
    return out


# Block statements by (what, filters' shape), built once: their blocks and filters are
# bound at each execution (PostgreSQL). Building one cost as much as running it.
_BLOCK_STATEMENTS: dict[tuple[str, bool, bool, bool], Any] = {}
# (table, key): the rows of the blocks among those the clauses `key` select (the series).
BlocksWhere = Callable[[Any, Sequence[ColumnElement[bool]]], ColumnElement[bool]]
FiltersWhere = Callable[[Any], list[ColumnElement[bool]]]


def block_statement(
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
    params = filter_params(filters)

    def filtered(table: Any) -> list[ColumnElement[bool]]:
        return filter_clauses(table, filters)

    dialect = dialect_of(session)
    if not dialect.binds_arrays:

        def of_blocks(table: Any, key: Sequence[ColumnElement[bool]]) -> ColumnElement[bool]:
            return dialect.keyed_or(key, [blocks_clause(session, table, blocks)])

        return build(of_blocks, filtered), params
    key = (what, *filters.shape())
    stmt = _BLOCK_STATEMENTS.get(key)
    if stmt is None:

        def where(table: Any, key: Sequence[ColumnElement[bool]]) -> ColumnElement[bool]:
            return and_(*key, dialect.in_int_pairs(table.grain, table.bucket, "blocks"))

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
    Task.failure_reason,
)


# Raw-row statements by (ranges, filters' shape), built once; values bound per execution.
_RAW_STATEMENTS: dict[tuple[int, bool, bool, bool], Any] = {}


def _raw_statement(n_ranges: int, filters: AnalyticsFilters) -> Any:
    key = (n_ranges, *filters.shape())
    stmt = _RAW_STATEMENTS.get(key)
    if stmt is None:
        at, ts = Task.created_at, Task.created_at.type
        window = or_(
            *(
                and_(at >= bindparam(f"lo{i}", type_=ts), at < bindparam(f"hi{i}", type_=ts))
                for i in range(n_ranges)
            )
        )
        stmt = select(*_RAW_COLUMNS).where(window, *filter_clauses(Task, filters))
        _RAW_STATEMENTS[key] = stmt
    return stmt


async def raw_rows(
    session: AsyncSession, ranges: Sequence[tuple[datetime, datetime]], filters: AnalyticsFilters
) -> Sequence[Any]:
    if not ranges:
        return []
    params = filter_params(filters)
    for i, (lo, hi) in enumerate(ranges):
        params[f"lo{i}"], params[f"hi{i}"] = lo, hi
    return await execute_folded(session, _raw_statement(len(ranges), filters), params)


def raw_selection(n_ranges: int, n_sub: int) -> tuple[ColumnElement[bool], ColumnElement[int]]:
    """A cover's raw rows in SQL: the condition that selects them (ranges bound as
    "lo{i}"/"hi{i}") and each row's sign, -1 in the subtracted ranges
    ("sub_lo{i}"/"sub_hi{i}") as `Cover.sign` counts it. Bound by `raw_params`."""
    at, ts = Task.created_at, Task.created_at.type

    def within(prefix: str, i: int) -> ColumnElement[bool]:
        lo = bindparam(f"{prefix}lo{i}", type_=ts)
        return and_(at >= lo, at < bindparam(f"{prefix}hi{i}", type_=ts))

    sign: ColumnElement[int] = (
        case((or_(*(within("sub_", i) for i in range(n_sub))), -1), else_=1)
        if n_sub
        else literal(1)
    )
    return or_(*(within("", i) for i in range(n_ranges))), sign


def raw_counter_sums(
    dialect: Dialect, n_ranges: int, n_sub: int, filters: Sequence[ColumnElement[bool]]
) -> tuple[ColumnElement[bool], list[Any]]:
    """A cover's raw rows in SQL, for a statement that sums them beside its blocks' rows
    (one round trip, no row each through the driver): the condition that selects them
    (the tasks' `filters` inside each range's term, `Dialect.keyed_or`: beside an OR of
    ranges SQLite sought a filter's index alone, every task of an agent type) and the
    signed sums of their COUNTERS (`raw_selection`)."""
    ranges, sign = raw_selection(n_ranges, n_sub)
    condition = dialect.keyed_or(filters, [ranges])
    values: dict[str, Any] = {
        "tasks": sign,
        **{name: case((Task.status == name, sign), else_=0) for name in STATUS_INDEX},
        "duration_sum_us": sign * func.coalesce(Task.duration_us, 0),
        "duration_count": case((Task.duration_us.is_not(None), sign), else_=0),
    }
    for name in COUNTERS:
        if name not in values:  # cost and token columns of the same names
            values[name] = sign * getattr(Task, name)
    return condition, [func.sum(values[c]) for c in COUNTERS]


def raw_params(cover: Cover) -> dict[str, Any]:
    """The parameters of `raw_counter_sums` for this cover's raw ranges."""
    params: dict[str, Any] = {}
    for i, (lo, hi) in enumerate(cover.raw()):
        params[f"lo{i}"], params[f"hi{i}"] = lo, hi
    for i, (lo, hi) in enumerate(cover.sub):
        params[f"sub_lo{i}"], params[f"sub_hi{i}"] = lo, hi
    return params


def signed(sign: int, values: list[int]) -> list[int]:
    return values if sign == 1 else [-v for v in values]


def sums(table: Any) -> list[Any]:
    return [func.coalesce(func.sum(getattr(table, c)), 0) for c in COUNTERS]


# --- figures -----------------------------------------------------------------------------


def ratio(num: int, den: int) -> float | None:
    return None if den == 0 else num / den


def avg_usd(micros: int, count: int) -> float | None:
    return None if count == 0 else float(Decimal(micros) / count / 1_000_000)


def avg_seconds(sum_us: int, count: int) -> float | None:
    return None if count == 0 else sum_us / count / 1_000_000
