"""The histogram's one statement where arrays are bound (PostgreSQL): the rollup rows of
the window's blocks and its raw edge tasks (signed), summed per local bucket in the
database, the buckets handed back as one row of arrays.

The statement is built once per shape (filters, which kinds of blocks, how many raw
ranges) with everything else bound at execution: the bucket starts, the blocks, the
ranges and the filters. Building and compiling it cost more than running it, and 720
result rows (30 days by hour) cost more to take through the driver than one row of
seven arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Select,
    and_,
    bindparam,
    case,
    func,
    select,
    union_all,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard_api.db.dialect import Dialect, dialect_of, int_list, int_pairs_params
from dashboard_api.db.models.analytics import AnalyticsRollup
from dashboard_api.db.models.tasks import Task
from dashboard_api.services.analytics.fold import execute_folded
from dashboard_api.services.analytics.layout import (
    SERIES_ALL_MODELS,
    SERIES_MARGINAL,
)
from dashboard_api.services.analytics.window import (
    AnalyticsFilters,
    Block,
    Cover,
    filter_clauses,
    filter_params,
    raw_selection,
)

# What a histogram bucket shows, in the order of `reads._HISTOGRAM_COUNTERS`.
COUNTERS = ("tasks", "completed", "failed", "cost_micros", "input_tokens", "output_tokens")

_Shape = tuple[Dialect, bool, bool, bool, bool, bool, int, int]
_STATEMENTS: dict[_Shape, Select[Any]] = {}


def _counter_rows(filters: AnalyticsFilters) -> list[ColumnElement[bool]]:
    """`window.counter_series` with its values bound ("hist_series", the filters)."""
    r = AnalyticsRollup.__table__.c
    dims = filter_clauses(r, filters)
    if filters.failure_reason:
        return [r.series.in_(bindparam("hist_series", expanding=True)), *dims]
    if filters.by_dimension:
        return [r.series == SERIES_ALL_MODELS, *dims]
    return [r.series == SERIES_MARGINAL, r.agent_type == "", r.source == "", r.model == ""]


def _build(
    dialect: Dialect,
    filters: AnalyticsFilters,
    grain_range: bool,
    blocks: bool,
    n_raw: int,
    n_sub: int,
) -> Select[Any]:
    r = AnalyticsRollup.__table__.c
    parts: list[Select[Any]] = []
    which: list[ColumnElement[bool]] = []
    if grain_range:
        which.append(
            and_(
                r.grain == bindparam("range_grain", type_=BigInteger),
                r.bucket >= bindparam("range_lo", type_=BigInteger),
                r.bucket < bindparam("range_hi", type_=BigInteger),
            )
        )
    if blocks:
        which.append(dialect.in_int_pairs(r.grain, r.bucket, "blocks"))
    # One part per kind of block, not one part with an OR of them: with the OR (of a
    # range and a join) PostgreSQL's index condition kept only the series, and the scan
    # read every row of the series at every grain (~11,000 rows, 500 buffers, for the
    # 720 of 30 days by hour). The parts never share a row: the range's blocks lie in the
    # inner buckets, the listed blocks in the first and the last.
    local = dialect.bisect_bound(r.bucket, "bounds")
    for blocks_of in which:
        columns = (getattr(r, c) for c in COUNTERS)
        parts.append(select(local, *columns).where(*_counter_rows(filters), blocks_of))
    if n_raw:
        raw_rows, sign = raw_selection(n_raw, n_sub)
        parts.append(
            select(
                dialect.bisect_bound(Task.created_at, "starts", instants=True),
                sign,
                case((Task.status == "completed", sign), else_=0),
                case((Task.status == "failed", sign), else_=0),
                sign * Task.cost_micros,
                sign * Task.input_tokens,
                sign * Task.output_tokens,
            ).where(raw_rows, *filter_clauses(Task, filters))
        )
    both = union_all(*parts).subquery("both_parts")
    index, *values = both.c
    per_bucket = (
        select(index.label("i"), *(sql_cast(func.sum(v), BigInteger) for v in values))
        .group_by(index)
        .subquery("per_bucket")
    )
    return select(*(dialect.int_list_agg(c) for c in per_bucket.c))


async def bucket_sums(
    session: AsyncSession,
    *,
    cover: Cover,
    grain_range: tuple[int, int, int] | None,
    blocks: Sequence[Block],
    bounds: Sequence[int],
    starts: Sequence[datetime],
    filters: AnalyticsFilters,
    sums: list[list[int]],
) -> None:
    """Write into `sums[i]` (COUNTERS of bucket i, starting at `starts[i]` = `bounds[i]`
    epoch seconds) what the window holds: the rollup rows of `grain_range` (grain, first
    bucket, end) and of `blocks`, and the raw tasks of the cover's ranges, signed."""
    ranges = cover.raw()
    if grain_range is None and not blocks and not ranges:
        return
    dialect = dialect_of(session)
    shape = (dialect, *filters.shape(), grain_range is not None, bool(blocks))
    key = (*shape, len(ranges), len(cover.sub))
    stmt = _STATEMENTS.get(key)
    if stmt is None:
        stmt = _STATEMENTS[key] = _build(
            dialect, filters, grain_range is not None, bool(blocks), len(ranges), len(cover.sub)
        )
    params = filter_params(filters)
    if filters.failure_reason:
        params["hist_series"] = filters.failure_series(overall=not filters.by_dimension)
    if grain_range is not None or blocks:
        params["bounds"] = list(bounds)
    if grain_range is not None:
        params["range_grain"], params["range_lo"], params["range_hi"] = grain_range
    if blocks:
        params.update(int_pairs_params("blocks", blocks))
    if ranges:
        params["starts"] = list(starts)
        for i, (lo, hi) in enumerate(ranges):
            params[f"lo{i}"], params[f"hi{i}"] = lo, hi
        for i, (lo, hi) in enumerate(cover.sub):
            params[f"sub_lo{i}"], params[f"sub_hi{i}"] = lo, hi
    rows = await execute_folded(session, stmt, params)
    if not rows or rows[0][0] is None:  # no bucket holds anything
        return
    columns = [int_list(column) for column in rows[0]]
    for i, *counts in zip(*columns, strict=True):
        sums[i - 1] = counts
