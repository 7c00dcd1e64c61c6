"""Exact counts of tasks from the rollups, and the row at an offset found through them.

Whole rollup blocks are counted from the rollups (plus the contributions not folded in
yet, `analytics_pending`), the partial blocks at a window's edges on the tasks, and so is
everything before the horizon retention pruned (the rollups still count pruned tasks),
from the instant before which no task is left (`Horizon.empty_before`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Select,
    and_,
    bindparam,
    case,
    false,
    func,
    literal,
    or_,
    select,
    tuple_,
    union_all,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard_api.db.dialect import dialect_of
from dashboard_api.db.models.analytics import (
    PENDING_TABLE,
    STATE_TABLE,
    AnalyticsRollup,
)
from dashboard_api.db.paging import Ordering
from dashboard_api.services.analytics.layout import (
    DAY,
    EPOCH,
    GRAINS,
    QUARTER,
    SERIES_ALL_MODELS,
    SERIES_MARGINAL,
    epoch_seconds,
)
from dashboard_api.services.tasks.filters import TASKS, TaskFilters
from dashboard_api.timeutil import merge_ranges, to_utc

_T = TASKS


async def count_expression(session: AsyncSession, *, filters: TaskFilters) -> ColumnElement[Any]:
    """The exact number of tasks matching `filters`, as an expression of scalar subqueries.

    count(*) over a million rows takes far longer than a page. Filters the analytics
    rollups can answer exactly (status, agent_type, source, created range) are counted
    from them: whole rollup blocks plus raw counts of the partial blocks at the edges.
    Every task write records its contribution in `analytics_pending` in its own
    transaction, and the rows not folded into the rollups yet are counted with them in
    the same statement, so this stays exact.
    The selective filters (ids, failure reason, `q`) are counted on their own indexes. An
    expression, so that the list query can carry it as a column (one round trip for page
    and total).
    """
    rollups_kept = session.info.get("analytics_rollups_enabled", True)
    if not rollups_kept or filters.q or filters.beyond_rollups:
        return count_raw(filters.clauses(session))
    horizon = await pruned_before(session)
    return _horizon_checked(await _count_by_rollups(session, filters, horizon), horizon)


# --- the pruned horizon ----------------------------------------------------------------
# The rollups keep counting the tasks retention pruned (services/retention.py), so the
# tasks created before `analytics_state.pruned_before_s` are counted from the table; only
# from `empty_before_s` on, before which the table holds no task: the index entries of
# the rows a prune deleted stay until vacuum, and a count over them walked them all. Each
# process remembers the horizon it last saw, per database; every count built on it
# checks it in its own statement and answers HORIZON_MOVED when a prune has moved
# `pruned_before_s` since, or an insert of an old task lowered `empty_before_s` below
# the remembered one, and the caller forgets it and counts again (`HORIZON_ATTEMPTS`
# times at most). A raised `empty_before_s` leaves the count exact (it only counts a
# range that holds nothing more).
HORIZON_MOVED = -1
HORIZON_ATTEMPTS = 3
_STATE = STATE_TABLE


class Horizon(NamedTuple):
    """What retention pruned, in epoch seconds: tasks created before `pruned_before` may
    be gone while the rollups still count them; none is left before `empty_before` (None:
    not known)."""

    pruned_before: int
    empty_before: int | None

    def raw_range(
        self, lo: datetime | None, hi: datetime | None
    ) -> tuple[datetime | None, datetime] | None:
        """The part of [lo, hi) (None: open) before `pruned_before` that may hold tasks,
        as (start or None, end); None when there is none."""
        pruned = EPOCH + timedelta(seconds=self.pruned_before)
        end = pruned if hi is None or hi > pruned else hi
        start = lo
        if self.empty_before is not None:
            empty = EPOCH + timedelta(seconds=self.empty_before)
            start = empty if lo is None or lo < empty else lo
        if start is not None and start >= end:
            return None
        return start, end


_PRUNED_BEFORE: dict[str, Horizon | None] = {}


def _database_key(session: AsyncSession) -> str:
    url = getattr(session.bind, "url", "")
    # Rendering a URL is ~2 % of a list request: kept per URL object (an engine keeps its).
    found = _URL_KEYS.get(id(url))
    if found is None or found[0] is not url:
        if len(_URL_KEYS) >= 64:
            _URL_KEYS.clear()
        found = _URL_KEYS[id(url)] = (url, str(url))
    return found[1]


_URL_KEYS: dict[int, tuple[object, str]] = {}


async def pruned_before(session: AsyncSession) -> Horizon | None:
    """The pruned horizon as this process last saw it (None: nothing was ever pruned)."""
    key = _database_key(session)
    if key not in _PRUNED_BEFORE:
        row = (
            await session.execute(
                select(_STATE.c.pruned_before_s, _STATE.c.empty_before_s).where(_STATE.c.id == 1)
            )
        ).first()
        found = None if row is None or row[0] is None else Horizon(int(row[0]), row[1])
        _PRUNED_BEFORE[key] = found
    return _PRUNED_BEFORE[key]


def forget_pruned_before(session: AsyncSession) -> None:
    _PRUNED_BEFORE.pop(_database_key(session), None)


def _state_now(column: Any) -> Any:
    return select(column).where(_STATE.c.id == 1).scalar_subquery()


def _horizon_checked(total: ColumnElement[Any], horizon: Horizon | None) -> ColumnElement[Any]:
    """`total`, or HORIZON_MOVED when `horizon` does not hold in this snapshot: another
    `pruned_before_s`, or an `empty_before_s` below the one counted from."""
    pruned = None if horizon is None else horizon.pruned_before
    holds = _state_now(_STATE.c.pruned_before_s).is_not_distinct_from(literal(pruned, BigInteger))
    if horizon is not None and horizon.empty_before is not None:
        empty = _state_now(_STATE.c.empty_before_s) >= literal(horizon.empty_before, BigInteger)
        holds = and_(holds, empty)
    return case((holds, total), else_=literal(HORIZON_MOVED, BigInteger))


async def _count_by_rollups(
    session: AsyncSession, filters: TaskFilters, horizon: Horizon | None
) -> ColumnElement[Any]:
    lo, hi = filters.created_after, filters.created_before
    if horizon is not None:
        pruned = EPOCH + timedelta(seconds=horizon.pruned_before)
        if lo is None or lo < pruned:
            # Before the horizon the rollups also count pruned tasks: count the rows (from
            # where any is left).
            span = horizon.raw_range(lo, hi)
            raw: ColumnElement[Any] = literal(0, BigInteger)
            if span is not None:
                early = replace(filters, created_after=span[0], created_before=span[1])
                raw = count_raw(early.clauses(session))
            if hi is not None and hi <= pruned:
                return raw
            late = replace(filters, created_after=pruned)
            return raw + await _count_by_rollups(session, late, None)
    if lo is None and hi is None:
        # Every task is in exactly one block of the coarsest grain.
        return _count_blocks(session, filters, [(GRAINS[-1], None)])
    if lo is None:
        lo = await session.scalar(select(func.min(_T.c.created_at)))
    if hi is None:
        newest = await session.scalar(select(func.max(_T.c.created_at)))
        hi = None if newest is None else newest + timedelta(microseconds=1)
    if lo is None or hi is None or lo >= hi:
        return literal(0, BigInteger)
    edges, blocks = _split_window(lo, hi)
    parts = []
    if blocks:
        parts.append(_count_blocks(session, filters, blocks))
    if edges:
        window = or_(*(and_(_T.c.created_at >= a, _T.c.created_at < b) for a, b in edges))
        plain = replace(filters, created_after=None, created_before=None)
        parts.append(count_raw([window, *plain.clauses(session)]))
    return sum(parts[1:], parts[0])


def _counts_by_rollups(session: AsyncSession, filters: TaskFilters) -> bool:
    return bool(
        session.info.get("analytics_rollups_enabled", True)
        and not filters.q
        and not filters.beyond_rollups
    )


def _block_counts(
    filters: TaskFilters,
    grains: Sequence[int],
    where: Sequence[ColumnElement[bool]] = (),
    *,
    span: tuple[Any, Any] | None = None,
    blocks: Sequence[tuple[int, int]] | None = None,
) -> Select[Any]:
    """(grain, bucket, n): the tasks matching `filters` (status, agent_type, source only)
    in each block of `grains`, exact in the statement's snapshot: the rollup rows plus
    the contributions not folded into them yet (`analytics_pending`). Only blocks
    starting in `span` ([start, end) epoch seconds) or listed in `blocks`, when given;
    `where` (which may name other CTEs) restricts every part."""
    r = AnalyticsRollup.__table__.c
    p = _PENDING.c
    counted = [r[s] for s in filters.status] or [r.tasks]
    if filters.agent_type or filters.source:
        rows = [r.series == SERIES_ALL_MODELS]
        for column, values in ((r.agent_type, filters.agent_type), (r.source, filters.source)):
            if values:
                rows.append(column.in_(list(values)))
    else:
        # The overall row of each block: one row per block instead of one per combination.
        rows = [r.series == SERIES_MARGINAL, r.agent_type == "", r.source == ""]
    rows.append(r.grain == grains[0] if len(grains) == 1 else r.grain.in_(list(grains)))
    rows += where
    if span is not None:
        rows += [r.bucket >= span[0], r.bucket < span[1]]
    if blocks is not None:
        rows.append(tuple_(r.grain, r.bucket).in_(list(blocks)))
    parts: list[Select[Any]] = [
        select(
            r.grain.label("grain"),
            r.bucket.label("bucket"),
            sum(counted[1:], counted[0]).label("n"),
        ).where(*rows)
    ]
    for grain in grains:
        pending = _pending_blocks(filters, grain).where(*where)
        if span is not None:
            pending = pending.where(p.created_s >= span[0], p.created_s < span[1])
        parts.append(pending)
    both = union_all(*parts).subquery()
    stmt = select(both.c.grain, both.c.bucket, func.sum(both.c.n).label("n")).group_by(
        both.c.grain, both.c.bucket
    )
    if blocks is not None:
        stmt = stmt.where(tuple_(both.c.grain, both.c.bucket).in_(list(blocks)))
    return stmt


# Block lengths the locator descends through below the top pieces: about 16 to 256 rows
# read per level, so that the whole descent is a few small index ranges.
_DESCENT = (16 * DAY, DAY, 3600, QUARTER)


async def locate_by_rollups(
    session: AsyncSession, filters: TaskFilters, ordering: Ordering, offset: int
) -> tuple[bool, Sequence[Any] | None]:
    """The key of the row `offset` rows into a created_at order, through the rollups (see
    `rollup_seek`): (True, key or None past the end), or (False, None) when they cannot
    count these filters or this order."""
    stmt = await rollup_seek(session, filters, ordering)
    if stmt is None:
        return False, None
    return True, (await session.execute(stmt, {"seek_offset": offset})).first()


async def rollup_seek(
    session: AsyncSession, filters: TaskFilters, ordering: Ordering
) -> Select[Any] | None:
    """One statement that selects the ordering's keys of the row `:seek_offset` rows into
    a created_at order (no row past the end), or None for orders and filters the rollups
    cannot count.

    OFFSET, even on the index alone, reads every row it skips (500,000 index entries for
    page 10,001). The rollups count each time block exactly, so the statement finds the
    block holding the row from the coarsest grain down (at each level, running sums over
    the children of the block found above), and walks only the 15-minute block found last
    with OFFSET. Being one statement, it reads one snapshot: the counts and the rows agree
    under concurrent writes. The caller still checks that a page was found where the
    total says one exists (see `paginate`), should the rollups ever disagree.
    """
    if ordering.name not in ("created_at", "-created_at") or not _counts_by_rollups(
        session, filters
    ):
        return None
    if not dialect_of(session).reuses_cte_results:
        return None
    lo, hi = filters.created_after, filters.created_before
    horizon = await pruned_before(session)
    if (lo is None) != (hi is None) or (horizon is not None and lo is None):
        # No task is left before `empty_before`: the oldest is looked for after it (the
        # index entries of pruned rows before it stay until vacuum).
        oldest_at = select(func.min(_T.c.created_at))
        if horizon is not None and horizon.empty_before is not None:
            empty = EPOCH + timedelta(seconds=horizon.empty_before)
            oldest_at = oldest_at.where(_T.c.created_at >= empty)
        oldest, newest = (
            await session.execute(
                select(
                    oldest_at.scalar_subquery(),
                    select(func.max(_T.c.created_at)).scalar_subquery(),
                )
            )
        ).one()
        lo = oldest if lo is None else lo
        hi = hi if hi is not None else None if newest is None else newest + _ONE_US
        if lo is None or hi is None or lo >= hi:
            return select(*ordering.keys).where(false(), literal(0) == _SEEK_OFFSET)
    # The statement is the same for every offset: built once per shape (building it
    # costs more than running it).
    key = (
        dialect_of(session),
        ordering.name,
        tuple(filters.status),
        tuple(filters.agent_type),
        tuple(filters.source),
        lo,
        hi,
        horizon,
    )
    stmt = _SEEKS.pop(key, None)
    if stmt is None:
        stmt = _seek_statement(session, filters, ordering, lo, hi, horizon)
        if len(_SEEKS) >= _SEEKS_KEPT:
            del _SEEKS[next(iter(_SEEKS))]
    _SEEKS[key] = stmt
    return stmt


_SEEK_OFFSET = bindparam("seek_offset", type_=BigInteger)
_SEEKS: dict[tuple[Any, ...], Select[Any]] = {}
_SEEKS_KEPT = 256


def _seek_statement(
    session: AsyncSession,
    filters: TaskFilters,
    ordering: Ordering,
    lo: datetime | None,
    hi: datetime | None,
    horizon: Horizon | None,
) -> Select[Any]:
    plain = replace(filters, created_after=None, created_before=None)
    # The top pieces: (lo_s, hi_s, grain, n), epoch seconds [lo_s, hi_s) intersected with
    # the filter's window; grain 0 marks a raw piece (counted on the tasks, not divided).
    if lo is None and hi is None:
        blocks = _block_counts(plain, [GRAINS[-1]]).subquery()
        top: Any = select(
            blocks.c.bucket.label("lo_s"),
            (blocks.c.bucket + blocks.c.grain).label("hi_s"),
            blocks.c.grain,
            blocks.c.n,
        )
    else:
        if lo is None or hi is None or lo >= hi:
            return select(*ordering.keys).where(false(), literal(0) == _SEEK_OFFSET)
        edges, whole = _split_at_horizon(lo, hi, horizon)
        parts: list[Any] = []
        if whole:
            asked = [(g, b) for g, b in whole if b is not None]
            blocks = _block_counts(plain, sorted({g for g, _ in asked}), blocks=asked).subquery()
            parts.append(
                select(
                    blocks.c.bucket.label("lo_s"),
                    (blocks.c.bucket + blocks.c.grain).label("hi_s"),
                    blocks.c.grain,
                    blocks.c.n,
                )
            )
        for a, b in edges:
            window = [_T.c.created_at >= a, _T.c.created_at < b]
            parts.append(
                select(
                    literal(epoch_seconds(a), BigInteger).label("lo_s"),
                    literal(-(-(b - EPOCH) // _ONE_S), BigInteger).label("hi_s"),
                    literal(0, BigInteger).label("grain"),
                    count_raw([*window, *plain.clauses(session)]).label("n"),
                )
            )
        if not parts:
            return select(*ordering.keys).where(false(), literal(0) == _SEEK_OFFSET)
        top = union_all(*parts) if len(parts) > 1 else parts[0]

    def scalar(column: Any) -> Any:
        return select(column).scalar_subquery()

    level = top.cte("seek_0")
    pick = _pick(level, _SEEK_OFFSET, ordering.descending, "pick_0")
    for i, grain in enumerate(_DESCENT, start=1):
        # The picked piece's blocks of this grain, or the piece itself when it is no
        # longer (or raw). Its bounds as scalar subqueries (the pick is one row or none):
        # index conditions on the rollups' key, where a join to the pick read every
        # block of the grain (8,641 quarter-hour rows at 90 days).
        kids = _block_counts(
            plain,
            [grain],
            [scalar(pick.c.grain) > grain],
            span=(scalar(pick.c.lo_s), scalar(pick.c.hi_s)),
        ).subquery()
        level = union_all(
            select(
                kids.c.bucket.label("lo_s"),
                (kids.c.bucket + kids.c.grain).label("hi_s"),
                kids.c.grain,
                kids.c.n,
            ),
            select(pick.c.lo_s, pick.c.hi_s, pick.c.grain, pick.c.n).where(pick.c.grain <= grain),
        ).cte(f"seek_{i}")
        pick = _pick(level, scalar(pick.c.rem), ordering.descending, f"pick_{i}")

    direction = [k.desc() if ordering.descending else k.asc() for k in ordering.keys]
    return (
        select(*ordering.keys)
        .where(
            _T.c.created_at >= scalar(dialect_of(session).epoch_seconds_to_ts(pick.c.lo_s)),
            _T.c.created_at < scalar(dialect_of(session).epoch_seconds_to_ts(pick.c.hi_s)),
            *filters.clauses(session),
        )
        .order_by(*direction)
        # No pick past the end: both bounds are NULL, and SQLite refuses a NULL OFFSET.
        .offset(func.coalesce(scalar(sql_cast(pick.c.rem, BigInteger)), 0))
        .limit(1)
    )


def _pick(level: Any, remaining: ColumnElement[Any], descending: bool, name: str) -> Any:
    """The one row of `level` (pieces in time order) holding the `remaining`-th matching
    task, and how many tasks of it come before that one; no row past the end."""
    order = level.c.lo_s.desc() if descending else level.c.lo_s.asc()
    running = select(
        level.c.lo_s,
        level.c.hi_s,
        level.c.grain,
        level.c.n,
        func.sum(level.c.n).over(order_by=order, rows=(None, 0)).label("upto"),
    ).subquery()
    before = running.c.upto - running.c.n
    return (
        select(
            running.c.lo_s,
            running.c.hi_s,
            running.c.grain,
            running.c.n,
            (remaining - before).label("rem"),
        )
        .where(before <= remaining, remaining < running.c.upto)
        .cte(name)
    )


_ONE_US = timedelta(microseconds=1)
_ONE_S = timedelta(seconds=1)
_PENDING = PENDING_TABLE


def count_raw(where: Sequence[ColumnElement[bool]]) -> ColumnElement[Any]:
    stmt = select(func.count()).select_from(_T)
    if where:
        stmt = stmt.where(and_(*where))
    return stmt.scalar_subquery()


def _count_blocks(
    session: AsyncSession, filters: TaskFilters, blocks: Sequence[tuple[int, int | None]]
) -> ColumnElement[Any]:
    """Tasks in whole rollup blocks ((grain, bucket); bucket None: every block)."""
    r = AnalyticsRollup.__table__.c
    counted = [r[s] for s in filters.status] or [r.tasks]
    by_grain: dict[int, list[int]] = {}
    every: list[int] = []
    for grain, bucket in blocks:
        if bucket is None:
            every.append(grain)
        else:
            by_grain.setdefault(grain, []).append(bucket)
    which = [r.grain == g for g in every]
    which += [and_(r.grain == g, r.bucket.in_(b)) for g, b in by_grain.items()]
    if filters.agent_type or filters.source:
        key = [r.series == SERIES_ALL_MODELS]
        for column, values in ((r.agent_type, filters.agent_type), (r.source, filters.source)):
            if values:
                key.append(column.in_(list(values)))
    else:
        # The overall row of each block: one row per block instead of one per combination.
        key = [r.series == SERIES_MARGINAL, r.agent_type == "", r.source == ""]
    where = dialect_of(session).keyed_or(key, which)
    stmt = select(func.coalesce(func.sum(sum(counted[1:], counted[0])), 0)).where(where)
    spans = None if every else merge_ranges([(b, b + g) for g, bs in by_grain.items() for b in bs])
    return stmt.scalar_subquery() + _pending_count(filters, spans)


def _pending_where(filters: TaskFilters) -> list[ColumnElement[bool]]:
    p = _PENDING.c
    where: list[ColumnElement[bool]] = []
    if filters.status:
        where.append(p.status.in_(list(filters.status)))
    for column, values in ((p.agent_type, filters.agent_type), (p.source, filters.source)):
        if values:
            where.append(column.in_(list(values)))
    return where


def _pending_count(
    filters: TaskFilters, spans: Sequence[tuple[int, int]] | None
) -> ColumnElement[Any]:
    """The net number of matching tasks that writes added to [start, end) spans of
    created_at (None: all time) and the rollups do not hold yet (`analytics_pending`)."""
    p = _PENDING.c
    where = _pending_where(filters)
    if spans is not None:
        where.append(or_(*(and_(p.created_s >= a, p.created_s < b) for a, b in spans)))
    return select(func.coalesce(func.sum(p.sign), 0)).where(*where).scalar_subquery()


def _pending_blocks(filters: TaskFilters, grain: int) -> Select[Any]:
    """(grain, bucket, net tasks) of the pending contributions per block of `grain`."""
    p = _PENDING.c
    bucket = (p.created_s - (p.created_s % grain + grain) % grain).label("bucket")
    return (
        select(literal(grain).label("grain"), bucket, func.sum(p.sign).label("n"))
        .where(*_pending_where(filters))
        .group_by(bucket)
    )


_QUARTER_US = QUARTER * 1_000_000


def _split_at_horizon(
    lo: datetime, hi: datetime, horizon: Horizon | None
) -> tuple[list[tuple[datetime, datetime]], list[tuple[int, int | None]]]:
    """`_split_window`, with the part before the pruned horizon a raw range of its own
    (from where any task is left)."""
    if horizon is not None:
        pruned = EPOCH + timedelta(seconds=horizon.pruned_before)
        if lo < pruned:
            span = horizon.raw_range(lo, hi)
            raw = [] if span is None else [(span[0] or lo, span[1])]
            if hi <= pruned:
                return raw, []
            edges, whole = _split_window(pruned, hi)
            return [*raw, *edges], whole
    return _split_window(lo, hi)


def _split_window(
    lo: datetime, hi: datetime
) -> tuple[list[tuple[datetime, datetime]], list[tuple[int, int | None]]]:
    """Raw edge ranges and whole (grain, bucket) blocks that cover [lo, hi) exactly once."""
    lo_us = (to_utc(lo) - EPOCH) // timedelta(microseconds=1)
    hi_us = (to_utc(hi) - EPOCH) // timedelta(microseconds=1)
    a = -(-lo_us // _QUARTER_US) * QUARTER  # first whole quarter, in epoch seconds
    b = hi_us // _QUARTER_US * QUARTER
    if a >= b:
        return [(lo, hi)], []
    edges = []
    if lo < EPOCH + timedelta(seconds=a):
        edges.append((lo, EPOCH + timedelta(seconds=a)))
    if EPOCH + timedelta(seconds=b) < hi:
        edges.append((EPOCH + timedelta(seconds=b), hi))
    blocks: list[tuple[int, int | None]] = []
    pos = a
    while pos < b:
        # The coarsest block aligned here that still fits (grains nest, so one exists).
        grain = next(g for g in reversed(GRAINS) if pos % g == 0 and pos + g <= b)
        blocks.append((grain, pos))
        pos += grain
    return edges, blocks
