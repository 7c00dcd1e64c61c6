"""Per-group figures of a window (overall, per agent type, source and model) with their
percentiles: histogram blocks of 1 hour and up (one packed row per block, group and
kind), the partial 1-hour blocks at the window's ends binned from their raw tasks in
SQL; the rows are added up and walked here."""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import (
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
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard_api.db.dialect import Dialect, bytes_list, dialect_of, int_list
from dashboard_api.db.models.analytics import AnalyticsHistogram, AnalyticsRollup
from dashboard_api.db.models.tasks import Task
from dashboard_api.money import micros_to_usd
from dashboard_api.schemas.analytics import (
    AgentTypeMetrics,
    Metrics,
    ModelMetrics,
    Performance,
    SourceMetrics,
)
from dashboard_api.services.analytics.bins import BinSum, nearest_rank
from dashboard_api.services.analytics.fold import execute_folded
from dashboard_api.services.analytics.layout import (
    BIN_THRESHOLDS,
    COUNTERS,
    FAILURE_SERIES,
    HIST_GRAINS,
    KIND_DURATION,
    KIND_FIRST_OUTPUT,
    SERIES_ALL_MODELS,
    SERIES_MARGINAL,
    SERIES_MODEL_MARGINAL,
    SERIES_PER_MODEL,
    bin_value,
    counters_of,
)
from dashboard_api.services.analytics.rebuild import hist_bins_sql
from dashboard_api.services.analytics.window import (
    Agg,
    AnalyticsFilters,
    BlocksWhere,
    Cover,
    FiltersWhere,
    avg_seconds,
    avg_usd,
    block_statement,
    cover_window,
    ratio,
    raw_counter_sums,
    raw_params,
    raw_rows,
    signed,
    sums,
)

_C = {name: i for i, name in enumerate(COUNTERS)}

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
        "success_rate": ratio(a["completed"], a["completed"] + a["failed"]),
        "avg_duration_seconds": avg_seconds(a["duration_sum_us"], a["duration_count"]),
        "p50_duration_seconds": seconds(KIND_DURATION, 50),
        "p95_duration_seconds": seconds(KIND_DURATION, 95),
        "total_cost_usd": micros_to_usd(a["cost_micros"]),
        "avg_cost_usd": avg_usd(a["cost_micros"], a["tasks"]),
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
    # histograms from 1 hour up, each with raw rows at the edges.
    cover = cover_window(start, end, now=now)
    combos: dict[tuple[str, str], Agg] = {}
    models: dict[str, Agg] = {}
    if cover.blocks:
        # The raw rows at the edges come in the same statement, summed (signed) per group.
        n_raw, n_sub = len(cover.raw()), len(cover.sub)
        build = functools.partial(
            _with_raw_counters,
            _failure_counter_groups if filters.failure_reason else _counter_groups,
            dialect_of(session),
            n_raw,
            n_sub,
        )
        stmt, params = block_statement(
            session, f"counter_groups/{n_raw}/{n_sub}", cover.blocks, filters, build
        )
        params.update(raw_params(cover))
        for part, agent_type, source, model, *values in await execute_folded(session, stmt, params):
            if part == 0:
                combos.setdefault((agent_type, source), Agg()).add_counters(values)
            else:
                models.setdefault(model, Agg()).add_counters(values)
    else:
        for row in await raw_rows(session, cover.raw(), filters):
            values = signed(cover.sign(row.created_at), counters_of(row))
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
        select(literal(0), r.agent_type, r.source, empty, *sums(r))
        .where(where(r, [r.series == SERIES_ALL_MODELS]), *filtered(r))
        .group_by(r.agent_type, r.source),
        select(literal(1), empty, empty, r.model, *sums(r))
        .where(where(r, [r.series == SERIES_PER_MODEL]), *filtered(r))
        .group_by(r.model),
    )


def _with_raw_counters(
    build: Callable[[BlocksWhere, FiltersWhere], CompoundSelect[Any]],
    dialect: Dialect,
    n_raw: int,
    n_sub: int,
    where: BlocksWhere,
    filtered: FiltersWhere,
) -> CompoundSelect[Any]:
    """`build`'s rows, and the same two parts over the `n_raw` raw ranges
    (`raw_counter_sums`): part 0 per (agent_type, source), part 1 per model."""
    blocks = build(where, filtered)
    if not n_raw:
        return blocks
    raw_where, raw_sums = raw_counter_sums(dialect, n_raw, n_sub, filtered(Task))
    empty = literal("")
    model = func.coalesce(Task.model, "")
    return union_all(
        *blocks.selects,
        select(literal(0), Task.agent_type, Task.source, empty, *raw_sums)
        .where(raw_where)
        .group_by(Task.agent_type, Task.source),
        select(literal(1), empty, empty, model, *raw_sums).where(raw_where).group_by(model),
    )


def _failure_counter_groups(where: BlocksWhere, filtered: FiltersWhere) -> CompoundSelect[Any]:
    """`_counter_groups` of the tasks with the filtered failure reasons: both parts from
    their series (per combination and model; bound: "failure_series")."""
    r = AnalyticsRollup.__table__.c
    empty = literal("")
    series = r.series.in_(bindparam("failure_series", expanding=True))
    return union_all(
        select(literal(0), r.agent_type, r.source, empty, *sums(r))
        .where(where(r, [series]), *filtered(r))
        .group_by(r.agent_type, r.source),
        select(literal(1), empty, empty, r.model, *sums(r))
        .where(where(r, [series]), *filtered(r))
        .group_by(r.model),
    )


_PERCENTS: tuple[tuple[int, int], ...] = (
    (KIND_DURATION, 50),
    (KIND_DURATION, 95),
    (KIND_FIRST_OUTPUT, 50),
)

_FAILURE_SERIES = frozenset(FAILURE_SERIES.values())
# A histogram row's key as read: (series, agent_type, source, model, kind).
RowKey = tuple[int, str, str, str, int]


def _groups_of(key: RowKey) -> tuple[tuple[int, str], ...]:
    """The percentile groups a histogram row (or edge bin) adds to."""
    series, agent_type, source, model, _ = key
    if series in _FAILURE_SERIES:
        # Per combination and model: every group at once.
        return ((_OVERALL, ""), (_AGENT, agent_type), (_SOURCE, source), (_MODEL, model))
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

    The window's histogram is its whole blocks of 1 hour and up (one packed row per
    block, group and kind: a few hundred rows for 30 days unfiltered), plus or minus the
    tasks of the partial 1-hour blocks at its ends (`cover_window`: at most 30 minutes of
    tasks each), binned and counted per bin in SQL. Both statements give one row per
    stored key (its rows' or bins' values as lists, ~70 result rows instead of ~1,600:
    taking a result row cost more than adding it); rows are added up per key
    (`BinSum.add_rows`), the few key sums into their groups, and each group's sum is
    walked for its percentiles.
    """
    cover = cover_window(start, end, HIST_GRAINS, now=now)
    per_key: dict[RowKey, BinSum] = {}
    if cover.blocks:
        h = AnalyticsHistogram.__table__.c
        # Filtered: the groups are summed from the per-combination series; unfiltered:
        # the marginal series hold each group's bins directly; by failure reason: the
        # reasons' series (bound: "failure_series") hold every group.
        series: Any = (
            bindparam("failure_series", expanding=True)
            if filters.failure_reason
            else (SERIES_ALL_MODELS, SERIES_PER_MODEL)
            if filters.by_dimension
            else (SERIES_MARGINAL, SERIES_MODEL_MARGINAL)
        )

        def build(where: BlocksWhere, filtering: FiltersWhere) -> Select[Any]:
            # One row per stored key, its blocks' rows as two lists: the rows are added
            # up here without a result row each.
            key = (h.series, h.agent_type, h.source, h.model, h.kind)
            return (
                select(*key, dialect.int_list_agg(h.bin_lo), dialect.bytes_list_agg(h.counts))
                .where(where(h, [h.series.in_(series)]), *filtering(h))
                .group_by(*key)
            )

        dialect = dialect_of(session)
        stmt, params = block_statement(session, "histogram_keys", cover.blocks, filters, build)
        for series_, agent_type, source, model, kind, bin_los, counts in await execute_folded(
            session, stmt, params
        ):
            acc = per_key[(series_, agent_type, source, model, kind)] = BinSum()
            acc.add_rows(int_list(bin_los), bytes_list(counts))
    if cover.add or cover.sub:
        for part, agent_type, source, model, kind, bins, counts in await execute_folded(
            session, *await _edge_bins(session, cover, filters)
        ):
            series_ = SERIES_PER_MODEL if part else SERIES_ALL_MODELS
            edge = BinSum.of_lists(int_list(bins), int_list(counts))
            per_key.setdefault((series_, agent_type, source, model, kind), BinSum()).add(edge)
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
_EDGE_STATEMENTS: dict[tuple[Dialect, int, int, bool, bool, bool], Select[Any]] = {}


async def _edge_bins(
    session: AsyncSession, cover: Cover, filters: AnalyticsFilters
) -> tuple[Select[Any], dict[str, Any]]:
    """The tasks of the cover's raw ranges counted per bin (those of subtracted ranges
    counted -1): a statement of rows (part, agent_type, source, model, kind, bins,
    counts), part 0 per (agent_type, source) and part 1 per model, the bins and their
    counts as two `int_list_agg` lists, and its parameters.

    The edge tasks are read and binned once (a CTE) and grouped twice per kind, instead of
    reading them once per group and kind.
    """
    await dialect_of(session).prepare_log_bin(session, BIN_THRESHOLDS)
    ranges = cover.raw()
    shape = (dialect_of(session), len(ranges), len(cover.sub), *filters.shape())
    params: dict[str, Any] = {}
    for i, (lo, hi) in enumerate(ranges):
        params[f"lo{i}"], params[f"hi{i}"] = lo, hi
    for i, (lo, hi) in enumerate(cover.sub):
        params[f"sub_lo{i}"], params[f"sub_hi{i}"] = lo, hi
    if filters.agent_type:
        params["agent_types"] = list(filters.agent_type)
    if filters.source:
        params["sources"] = list(filters.source)
    if filters.failure_reason:
        params["failure_reasons"] = list(filters.failure_reason)
    stmt = _EDGE_STATEMENTS.get(shape)
    if stmt is None:
        stmt = _EDGE_STATEMENTS[shape] = _edge_statement(session, *shape[1:])
    return stmt, params


def _edge_statement(
    session: AsyncSession,
    n_ranges: int,
    n_sub: int,
    agent_types: bool,
    sources: bool,
    failure_reasons: bool,
) -> Select[Any]:
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
    if failure_reasons:
        conds.append(Task.failure_reason.in_(bindparam("failure_reasons", expanding=True)))
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
            select(
                literal(0).label("part"), tasks.c.agent_type, tasks.c.source,
                empty.label("model"), literal(kind).label("kind"), b.label("bin"),
                count.label("n"),
            )
            .where(b.is_not(None))
            .group_by(tasks.c.agent_type, tasks.c.source, b)
        )  # fmt: skip
        parts.append(
            select(literal(1), empty, empty, tasks.c.model, literal(kind), b, count)
            .where(b.is_not(None))
            .group_by(tasks.c.model, b)
        )
    per_bin = union_all(*parts).subquery("per_bin")
    c = per_bin.c
    # One row per key with its bins and counts as two lists (~40 rows, not ~1,000).
    dialect = dialect_of(session)
    key = (c.part, c.agent_type, c.source, c.model, c.kind)
    return select(*key, dialect.int_list_agg(c.bin), dialect.int_list_agg(c.n)).group_by(*key)


# --- one window, every scope at once (alert rules) ---------------------------------------


async def counters_by_combination(
    session: AsyncSession, *, start: datetime, end: datetime, now: datetime | None = None
) -> dict[tuple[str, str], Agg]:
    """The counters of the tasks created in [start, end) per (agent_type, source): any
    scope of agent types and sources sums from these, so many rules over one window cost
    one block statement and one raw-row statement."""
    cover = cover_window(start, end, now=now)
    combos: dict[tuple[str, str], Agg] = {}
    everything = AnalyticsFilters()
    if cover.blocks:
        stmt, params = block_statement(
            session, "counter_groups", cover.blocks, everything, _counter_groups
        )
        conn = await session.connection()
        for part, agent_type, source, _model, *values in await conn.execute(stmt, params):
            if part == 0:
                combos.setdefault((agent_type, source), Agg()).add_counters(values)
    for row in await raw_rows(session, cover.raw(), everything):
        values = signed(cover.sign(row.created_at), counters_of(row))
        combos.setdefault((row.agent_type, row.source), Agg()).add_counters(values)
    return combos


async def p95_durations(
    session: AsyncSession,
    *,
    start: datetime,
    end: datetime,
    filters: AnalyticsFilters,
    now: datetime | None = None,
) -> dict[tuple[str, str], float]:
    """The p95 duration (seconds) of the tasks created in [start, end) per group:
    ("", "") overall, ("agent_type", name), ("source", name); unfiltered, one call
    answers every single-dimension scope."""
    names = {_OVERALL: "", _AGENT: "agent_type", _SOURCE: "source"}
    out: dict[tuple[str, str], float] = {}
    for (dim, group), picks in (await _percentiles(session, start, end, filters, now)).items():
        b = picks.get((KIND_DURATION, 95))
        if dim in names and b is not None:
            out[(names[dim], group)] = bin_value(b) / 1_000_000
    return out
