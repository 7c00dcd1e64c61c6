"""Figures of trailing windows (the last N minutes up to one instant) for every scope of
agent type and source at once, one statement per kind of figure whatever the number of
windows: what a round of alert rules reads.

Each window is covered as the other reads cover it (`cover_window`: whole rollup blocks,
plus or minus the raw tasks of its partial blocks at the edges). The windows' blocks and
edge ranges are tables of values joined in the statement (`Dialect.rows_table`: array
parameters on PostgreSQL, so the statement's text and prepared plan stay the same round
after round; a first version with one UNION branch per window spent 10 ms planning at
every execution). Counters: the rollup rows of every window's blocks and the signed raw
tasks of its edges, summed in SQL per (window, agent type, source). Duration
percentiles: the histogram rows of every window's whole blocks of 1 hour and up (a
block that several windows hold is read once) and the edge tasks counted per (window,
agent type, source, log bin) in SQL; the packed rows are added up per window and scope
here.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Integer,
    LargeBinary,
    and_,
    bindparam,
    case,
    cast,
    func,
    literal_column,
    null,
    select,
    true,
    union_all,
)
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard_api.db.dialect import dialect_of, int_pairs_params
from dashboard_api.db.models.analytics import AnalyticsHistogram, AnalyticsRollup
from dashboard_api.db.models.tasks import Task
from dashboard_api.services.analytics.bins import BinSum, nearest_rank
from dashboard_api.services.analytics.layout import (
    BIN_THRESHOLDS,
    COUNTERS,
    GRAINS,
    HIST_GRAINS,
    KIND_DURATION,
    SERIES_ALL_MODELS,
    SERIES_MARGINAL,
    STATUS_INDEX,
    bin_value,
)
from dashboard_api.services.analytics.rebuild import hist_bins_sql
from dashboard_api.services.analytics.window import Agg, Block, Cover, blocks_clause, cover_window

Pair = tuple[str, str]  # (agent_type, source)
# A scope of agent type and source; None: any. (None, None) is the whole fleet.
Scope = tuple[str | None, str | None]

# The raw task counters below follow COUNTERS: tasks, the five statuses, then the sums.
assert COUNTERS[1:6] == tuple(STATUS_INDEX), COUNTERS

_BLOCK_COLUMNS = (("w", Integer()), ("grain", Integer()), ("bucket", BigInteger()))
_RANGE_COLUMNS = (
    ("w", Integer()),
    ("lo", Task.created_at.type),
    ("hi", Task.created_at.type),
    ("sign", Integer()),
)


def _covers(now: datetime, minutes: Sequence[int], grains: Sequence[int]) -> list[Cover]:
    return [cover_window(now - timedelta(minutes=m), now, grains, now=now) for m in minutes]


def _block_rows(covers: Sequence[Cover]) -> list[tuple[int, int, int]]:
    """(window position, grain, bucket) of every window's whole blocks."""
    return [(i, grain, bucket) for i, c in enumerate(covers) for grain, bucket in c.blocks]


def _range_rows(covers: Sequence[Cover]) -> list[tuple[int, datetime, datetime, int]]:
    """(window position, lo, hi, sign) of every window's raw ranges: +1 for the tasks a
    window adds, -1 for those it subtracts (its block counts them, the window does not)."""
    return [
        (i, lo, hi, sign)
        for i, c in enumerate(covers)
        for ranges, sign in ((c.add, 1), (c.sub, -1))
        for lo, hi in ranges
    ]


def _raw_counters(t: Any, sign: Any) -> list[Any]:
    """What the signed raw tasks (columns `t`) add to each of COUNTERS
    (`layout.counters_of` in SQL)."""

    def total(value: Any) -> Any:
        return func.coalesce(func.sum(value), 0)

    return [
        total(sign),
        *(total(case((t.status == status, sign), else_=0)) for status in STATUS_INDEX),
        *(total(sign * t[name]) for name in COUNTERS[6:11]),
        total(sign * func.coalesce(t.duration_us, 0)),
        total(case((t.duration_us.is_not(None), sign), else_=0)),
    ]


def _tasks_in_ranges(
    session: AsyncSession, ranges: Any, columns: Sequence[Any], *where: Any
) -> tuple[Any, Any]:
    """The tasks created in each range of the `ranges` table (an index range each),
    joined to it: the FROM clause and the tasks' `columns` in it."""
    within = and_(Task.created_at >= ranges.c.lo, Task.created_at < ranges.c.hi, *where)
    if dialect_of(session).joins_ranges_laterally:
        # OFFSET 0 keeps the subquery from being flattened back into a plain join.
        tasks = select(*columns).where(within).offset(0).lateral("tasks_in_range")
        return ranges.join(tasks, true()), tasks.c
    return ranges.join(Task, within), select(*columns).selected_columns


# Statements by (what, backend) where arrays are bound, so that their text does not
# depend on the windows: built once (building one cost more than running it).
_STATEMENTS: dict[tuple[str, str], Any] = {}


def _cached(session: AsyncSession, what: str, build: Any) -> Any:
    dialect = dialect_of(session)
    if not dialect.binds_arrays:
        return build()
    stmt = _STATEMENTS.get((what, dialect.backend))
    if stmt is None:
        stmt = _STATEMENTS[(what, dialect.backend)] = build()
    return stmt


def _counters_statement(session: AsyncSession, blocks: Any, ranges: Any) -> Any:
    """Rows (window position, agent_type, source, *COUNTERS): the rollup rows of the
    `blocks` table's blocks and the signed raw tasks of the `ranges` table's ranges, each
    summed per window and (agent_type, source)."""
    r = AnalyticsRollup.__table__.c
    parts = []
    if blocks is not None:
        parts.append(
            select(blocks.c.w, r.agent_type, r.source, *(
                func.coalesce(func.sum(r[c]), 0) for c in COUNTERS
            ))
            .select_from(blocks.join(AnalyticsRollup, and_(
                r.series == SERIES_ALL_MODELS, r.grain == blocks.c.grain,
                r.bucket == blocks.c.bucket,
            )))
            .group_by(blocks.c.w, r.agent_type, r.source)
        )  # fmt: skip
    if ranges is not None:
        columns = (Task.agent_type, Task.source, Task.status, Task.duration_us, *(
            getattr(Task, name) for name in COUNTERS[6:11]
        ))  # fmt: skip
        joined, t = _tasks_in_ranges(session, ranges, columns)
        parts.append(
            select(ranges.c.w, t.agent_type, t.source, *_raw_counters(t, ranges.c.sign))
            .select_from(joined)
            .group_by(ranges.c.w, t.agent_type, t.source)
        )
    return union_all(*parts)


async def trailing_counters(
    session: AsyncSession, *, now: datetime, minutes: Collection[int]
) -> dict[int, dict[Pair, Agg]]:
    """The counters of the tasks created in the last `m` minutes before `now`, for each
    `m` of `minutes`, per (agent_type, source): any scope sums from these."""
    ordered = sorted(set(minutes))
    covers = _covers(now, ordered, GRAINS)
    block_rows, range_rows = _block_rows(covers), _range_rows(covers)
    out: dict[int, dict[Pair, Agg]] = {m: {} for m in ordered}
    if not block_rows and not range_rows:
        return out
    # Without array parameters a table of values needs a row: an empty part is left out
    # (the statement is then built at each call anyway).
    dialect = dialect_of(session)
    arrays = dialect.binds_arrays
    params: dict[str, Any] = {}
    blocks = ranges = None
    if block_rows or arrays:
        blocks, block_params = dialect.rows_table("blocks", _BLOCK_COLUMNS, block_rows)
        params.update(block_params)
    if range_rows or arrays:
        ranges, range_params = dialect.rows_table("ranges", _RANGE_COLUMNS, range_rows)
        params.update(range_params)
    stmt = _cached(session, "counters", lambda: _counters_statement(session, blocks, ranges))
    conn = await session.connection()
    for position, agent_type, source, *values in await conn.execute(stmt, params):
        out[ordered[position]].setdefault((agent_type, source), Agg()).add_counters(values)
    return out


def _scope_of_row(series: int, agent_type: str, source: str) -> Scope:
    """The scope a histogram row counts: the marginal series holds one row set per agent
    type (source ''), per source (agent type '') and overall (both ''); the
    all-models series one per (agent type, source)."""
    if series == SERIES_ALL_MODELS:
        return (agent_type, source)
    return (agent_type or None, source or None)


def _hist_blocks_params(session: AsyncSession, blocks: Sequence[Block]) -> dict[str, Any]:
    if not dialect_of(session).binds_arrays:
        return {}  # the blocks are in the statement
    return int_pairs_params("hist_blocks", blocks)


def _stored_histograms(session: AsyncSession, blocks: Sequence[Block], pairs: bool) -> list[Any]:
    """Statements of rows (-1, grain, bucket, series, agent_type, source, bin_lo, counts,
    0) of the stored duration histograms of `blocks` (bound as `hist_blocks` on
    PostgreSQL): the marginal series, and with `pairs` the per-combination series of the
    agent types and sources bound as `pair_agent_types` and `pair_sources`."""
    h = AnalyticsHistogram.__table__.c
    dialect = dialect_of(session)
    if dialect.binds_arrays:
        pairs_clause = dialect.in_int_pairs(h.grain, h.bucket, "hist_blocks")

        def of_series(series: int) -> ColumnElement[bool]:
            return and_(h.series == series, pairs_clause)
    else:
        clause = blocks_clause(session, h, blocks)

        # The series written into each block's term: beside an OR of blocks, SQLite read
        # every row of the series (`Dialect.keyed_or`).
        def of_series(series: int) -> ColumnElement[bool]:
            return dialect.keyed_or([h.series == series], [clause])

    columns = (h.grain, h.bucket, h.series, h.agent_type, h.source, h.bin_lo, h.counts)
    stored = literal_column("-1", Integer)
    zero = literal_column("0", BigInteger)
    # One statement per series: each probes the histogram's key (series, grain, bucket,
    # ...) once per block. With an OR of the two series the planner read the whole table
    # instead (90 ms at 100,000 tasks).
    parts = [
        select(stored, *columns, zero).where(of_series(SERIES_MARGINAL), h.kind == KIND_DURATION)
    ]
    if pairs:
        parts.append(
            select(stored, *columns, zero).where(
                of_series(SERIES_ALL_MODELS),
                h.kind == KIND_DURATION,
                h.agent_type.in_(bindparam("pair_agent_types", expanding=True)),
                h.source.in_(bindparam("pair_sources", expanding=True)),
            )
        )
    return parts


def _edge_bins(session: AsyncSession, ranges: Any) -> Any:
    """Rows (window position, NULL, NULL, NULL, agent_type, source, log bin, NULL, signed
    count) of the raw tasks of the `ranges` table with a duration."""
    (_, duration_bin, _), _ = hist_bins_sql(session)
    columns = (Task.agent_type, Task.source, duration_bin.label("bin"))
    joined, t = _tasks_in_ranges(session, ranges, columns, Task.duration_us.is_not(None))
    return (
        select(
            ranges.c.w, null(), null(), null(), t.agent_type, t.source, t.bin,
            cast(null(), LargeBinary), func.sum(ranges.c.sign),
        )
        .select_from(joined)
        .group_by(ranges.c.w, t.agent_type, t.source, t.bin)
    )  # fmt: skip


async def trailing_p95(
    session: AsyncSession,
    *,
    now: datetime,
    minutes: Collection[int],
    pairs: Collection[Pair] = (),
) -> dict[int, dict[Scope, float]]:
    """The p95 duration (seconds) of the tasks created in the last `m` minutes before `now`,
    for each `m` of `minutes`, per scope: the whole fleet, each agent type, each source,
    and each (agent type, source) of `pairs`. Scopes without a duration are left out."""
    ordered = sorted(set(minutes))
    covers = _covers(now, ordered, HIST_GRAINS)
    pairs = set(pairs)
    blocks = sorted({b for cover in covers for b in cover.blocks})
    range_rows = _range_rows(covers)
    if not blocks and not range_rows:
        return {m: {} for m in ordered}
    dialect = dialect_of(session)
    await dialect.prepare_log_bin(session, BIN_THRESHOLDS)
    # Without array parameters a table of values needs a row, and the blocks are written
    # into the statement: an empty part is left out.
    arrays = dialect.binds_arrays
    params: dict[str, Any] = {}
    if blocks or arrays:
        params.update(_hist_blocks_params(session, blocks))
    if pairs:
        params["pair_agent_types"] = sorted({a for a, _ in pairs})
        params["pair_sources"] = sorted({s for _, s in pairs})
    ranges = None
    if range_rows or arrays:
        ranges, range_params = dialect.rows_table("ranges", _RANGE_COLUMNS, range_rows)
        params.update(range_params)

    def build() -> Any:
        parts = _stored_histograms(session, blocks, bool(pairs)) if blocks or arrays else []
        if ranges is not None:
            parts.append(_edge_bins(session, ranges))
        return union_all(*parts)

    stmt = _cached(session, f"p95 {bool(pairs)}", build)
    conn = await session.connection()
    stored: dict[Block, list[tuple[Scope, int, bytes]]] = {}
    edges: list[dict[Scope, dict[int, int]]] = [{} for _ in ordered]
    for position, grain, bucket, series, agent_type, source, index, counts, n in await conn.execute(
        stmt, params
    ):
        if position < 0:
            scope = _scope_of_row(series, agent_type, source)
            stored.setdefault((grain, bucket), []).append((scope, index, counts))
            continue
        scopes: list[Scope] = [(None, None), (agent_type, None), (None, source)]
        if (agent_type, source) in pairs:
            scopes.append((agent_type, source))
        groups = edges[position]
        for scope in scopes:
            bins = groups.setdefault(scope, {})
            bins[index] = bins.get(index, 0) + int(n)
    return {
        m: _p95s(cover, stored, edges[i], pairs)
        for i, (m, cover) in enumerate(zip(ordered, covers, strict=True))
    }


def _p95s(
    cover: Cover,
    stored: dict[Block, list[tuple[Scope, int, bytes]]],
    edges: dict[Scope, dict[int, int]],
    pairs: Collection[Pair],
) -> dict[Scope, float]:
    """One window's p95 per scope from its blocks' stored rows and its edge bins."""
    acc: dict[Scope, BinSum] = {}
    for block in cover.blocks:
        for scope, bin_lo, counts in stored.get(block, ()):
            if scope[0] is not None and scope[1] is not None and scope not in pairs:
                continue
            total = acc.get(scope)
            if total is None:
                acc[scope] = total = BinSum()
            total.add_packed(bin_lo, counts)
    for scope, bins in edges.items():
        acc.setdefault(scope, BinSum()).add(BinSum.of(bins))
    out: dict[Scope, float] = {}
    for scope, total in acc.items():
        lo, per_bin = total.counts()
        found = nearest_rank(lo, per_bin, (95,))
        if found:
            out[scope] = bin_value(found[95]) / 1_000_000
    return out
