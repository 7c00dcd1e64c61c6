"""The summary and the histogram of a window of `created_at` (see `window` for how a
window is read: whole rollup blocks in the middle, raw rows at the edges)."""

from __future__ import annotations

import bisect
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import (
    ColumnElement,
    CompoundSelect,
    Select,
    and_,
    func,
    literal,
    select,
    union_all,
)
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard_api.bounded import BoundedCache
from dashboard_api.db.dialect import Dialect, dialect_of
from dashboard_api.db.models.analytics import AnalyticsRollup
from dashboard_api.db.models.tasks import Task
from dashboard_api.money import micros_to_usd
from dashboard_api.schemas.analytics import FailedByReason, Period, Summary
from dashboard_api.services.analytics.buckets import bucket_starts, parse_tz
from dashboard_api.services.analytics.fold import execute_folded
from dashboard_api.services.analytics.histogram_sql import COUNTERS as HISTOGRAM_COUNTERS
from dashboard_api.services.analytics.histogram_sql import bucket_sums
from dashboard_api.services.analytics.layout import (
    COUNTERS,
    FAILURE_MARGINAL_SERIES,
    FAILURE_SERIES,
    GRAINS,
    counters_of,
)
from dashboard_api.services.analytics.window import (
    Agg,
    AnalyticsFilters,
    Block,
    BlocksWhere,
    Cover,
    FiltersWhere,
    Ranges,
    avg_seconds,
    avg_usd,
    block_statement,
    blocks_clause,
    counter_series,
    cover_window,
    from_epoch,
    ratio,
    raw_counter_sums,
    raw_params,
    raw_rows,
    signed,
    summed_series,
    sums,
)
from dashboard_api.timeutil import format_ts

_C = {name: i for i, name in enumerate(COUNTERS)}

# --- figures -----------------------------------------------------------------------------


async def summary(
    session: AsyncSession,
    *,
    start: datetime,
    end: datetime,
    filters: AnalyticsFilters,
    now: datetime | None = None,
) -> Summary:
    """Totals of the tasks created in [start, end) (`now`: see `cover_window`), and the
    failed ones per failure reason."""
    cover = cover_window(start, end, now=now)
    agg = Agg()
    by_reason = dict.fromkeys(FAILURE_SERIES, 0)
    if cover.blocks:
        # One statement, grouped by series: the rows that hold the filtered tasks once,
        # and the failure series (with the same filters) for the breakdown. A series can
        # be both (filtered by failure reason).
        totals = set(summed_series(filters))
        per_reason = FAILURE_SERIES if filters.by_dimension else FAILURE_MARGINAL_SERIES
        reason_of = {
            per_reason[r]: r for r in filters.failure_reason or FAILURE_SERIES if r in per_reason
        }
        # The raw rows at the edges come in the same statement, summed (signed) per
        # failure reason, as series _RAW.
        n_raw, n_sub = len(cover.raw()), len(cover.sub)
        stmt, params = block_statement(
            session,
            f"summary/{n_raw}/{n_sub}",
            cover.blocks,
            filters,
            functools.partial(_summary_rows, dialect_of(session), n_raw, n_sub),
        )
        params["series"] = sorted(totals | set(reason_of))
        params.update(raw_params(cover))
        for series, reason, *values in await execute_folded(session, stmt, params):
            if series == _RAW:
                agg.add_counters(values)
                if reason in by_reason:
                    by_reason[reason] += int(values[0])
                continue
            if series in totals:
                agg.add_counters(values)
            if series in reason_of:
                by_reason[reason_of[series]] += int(values[0])
    else:
        for row in await raw_rows(session, cover.raw(), filters):
            sign = cover.sign(row.created_at)
            agg.add_counters(signed(sign, counters_of(row)))
            if row.failure_reason in by_reason:
                by_reason[row.failure_reason] += sign
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
        avg_cost_per_task_usd=avg_usd(agg["cost_micros"], tasks),
        input_tokens=agg["input_tokens"],
        output_tokens=agg["output_tokens"],
        cache_read_tokens=agg["cache_read_tokens"],
        cache_write_tokens=agg["cache_write_tokens"],
        total_tokens=agg["input_tokens"] + agg["output_tokens"],
        success_rate=ratio(agg["completed"], agg["completed"] + agg["failed"]),
        avg_duration_seconds=avg_seconds(agg["duration_sum_us"], agg["duration_count"]),
        tasks_per_day=tasks / days,
        failed_by_reason=FailedByReason(**by_reason),
    )


# The series of `_summary_rows`' raw part (no stored series is negative).
_RAW = -1


def _summary_rows(
    dialect: Dialect, n_raw: int, n_sub: int, where: BlocksWhere, filtered: FiltersWhere
) -> CompoundSelect[Any] | Select[Any]:
    """(series, reason, *COUNTERS) of the rows of some blocks and series (bound: "series";
    reason ''), and of the `n_raw` raw ranges (`raw_counter_sums`): series _RAW, one row
    per failure reason."""
    r = AnalyticsRollup.__table__.c
    # One array parameter on PostgreSQL: an expanding IN was rendered into the
    # statement's text again on every execution (SQLAlchemy's post-compile step).
    series = dialect.in_bound_ints(r.series, "series")
    blocks = (
        select(r.series, literal("").label("reason"), *sums(r))
        .where(where(r, [series]), *filtered(r))
        .group_by(r.series)
    )
    if not n_raw:
        return blocks
    raw_where, raw_sums = raw_counter_sums(dialect, n_raw, n_sub, filtered(Task))
    reason = func.coalesce(Task.failure_reason, "")
    raw = select(literal(_RAW), reason, *raw_sums).where(raw_where).group_by(reason)
    return union_all(blocks, raw)


def _common_grain(edges: Sequence[int]) -> int | None:
    """The coarsest grain that every edge (epoch seconds) is a multiple of, if any."""
    common = math.gcd(*edges)
    return next((g for g in reversed(GRAINS) if common % g == 0), None)


# What a histogram bucket shows: the other counters are not read.
_HISTOGRAM_COUNTERS = HISTOGRAM_COUNTERS
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
    starts, bounds, last_end = bucket_starts(tz, period, start, end, max_buckets)
    ends = [*starts[1:], last_end]
    # One list of _HISTOGRAM_COUNTERS per bucket (720 objects cost more than the query).
    sums = [[0] * len(_HISTOGRAM_COUNTERS) for _ in starts]
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
    if dialect_of(session).binds_arrays:
        # One statement, built once per shape: the rollup rows and the raw rows (signed)
        # of the window, summed per local bucket in the database.
        await bucket_sums(
            session,
            cover=cover,
            grain_range=(grain, bounds[1], bounds[-1]) if grain else None,
            blocks=blocks,
            bounds=bounds,
            starts=starts,
            filters=filters,
            sums=sums,
        )
        return HistogramAnswer(period, tz_name, start, end, bounds, sums)
    r = AnalyticsRollup
    which: list[ColumnElement[bool]] = []
    if grain:
        which.append(and_(r.grain == grain, r.bucket >= bounds[1], r.bucket < bounds[-1]))
    if blocks:
        which.append(blocks_clause(session, r, blocks))
    conds = (dialect_of(session).keyed_or(counter_series(r, filters), which),) if which else ()
    if which:
        columns = [func.sum(getattr(r, c)) for c in _HISTOGRAM_COUNTERS]
        stmt = select(r.bucket, *columns).where(*conds).group_by(r.grain, r.bucket)
        for bucket, *values in await execute_folded(session, stmt):
            acc = sums[bisect.bisect_right(bounds, bucket) - 1]
            for k, v in enumerate(values):
                acc[k] += int(v)
    for row in await raw_rows(session, cover.raw(), filters):
        acc = sums[bisect.bisect_right(starts, row.created_at) - 1]
        counters = counters_of(row)
        sign = cover.sign(row.created_at)
        for k, c in enumerate(_HISTOGRAM_INDEX):
            acc[k] += sign * counters[c]
    return HistogramAnswer(period, tz_name, start, end, bounds, sums)


# Bucket starts (epoch seconds) as the API writes them: a moving window meets the same
# hours again and again, and formatting 720 of them cost more than the query. Bounded.
_TS_TEXT: BoundedCache[int, str] = BoundedCache(200_000)


def _ts_text(epoch_s: int) -> str:
    text = _TS_TEXT.get(epoch_s)
    if text is None:
        text = _TS_TEXT.put(epoch_s, format_ts(from_epoch(epoch_s)))
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
