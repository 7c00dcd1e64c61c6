"""Tasks: registration, the status state machine, output, claims, cancellation, queries."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Select,
    String,
    Table,
    and_,
    bindparam,
    false,
    func,
    insert,
    literal,
    literal_column,
    or_,
    select,
    text,
    tuple_,
    union_all,
    update,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.util import identity_key

from dashboard_api.db.dialect import (
    backend_of,
    contains_ci,
    epoch_seconds_to_ts,
    lock_for_update,
    lock_skip_locked,
    reuses_cte_results,
    upsert,
)
from dashboard_api.db.engine import Database, PendingEvent, emit
from dashboard_api.db.models import Task, TaskEvent, TaskOutputChunk
from dashboard_api.db.models.analytics import AnalyticsPending, AnalyticsRollup
from dashboard_api.db.paging import (
    SEEK_FROM_OFFSET,
    Ordering,
    PageRequest,
    PageResult,
    decode_cursor,
    paginate,
)
from dashboard_api.errors import Conflict, NotFound, PayloadTooLarge
from dashboard_api.ids import new_id
from dashboard_api.money import usd_to_micros
from dashboard_api.schemas.tasks import (
    SUMMARY_COLUMNS,
    TERMINAL_STATUSES,
    OutputChunkIn,
    TaskCreate,
    TaskUpdate,
)
from dashboard_api.schemas.tasks_json import summary_from_row
from dashboard_api.services import task_search
from dashboard_api.services.analytics_rollups import (
    DAY,
    EPOCH,
    GRAINS,
    QUARTER,
    SERIES_ALL_MODELS,
    SERIES_MARGINAL,
    epoch_seconds,
)
from dashboard_api.services.budgets.holds import not_held
from dashboard_api.services.pricing import PriceTable
from dashboard_api.services.task_hooks import (
    PLAIN_APPENDS_NEED_NO_HOOKS,
    TaskSnapshot,
    snapshot,
    task_written,
)
from dashboard_api.timeutil import format_ts, merge_ranges, to_utc

ALLOWED_MOVES: dict[str, frozenset[str]] = {
    "queued": frozenset({"running", "cancelled", "failed"}),
    "running": frozenset({"completed", "failed", "cancelled"}),
    "completed": frozenset(),
    "failed": frozenset(),
    "cancelled": frozenset(),
}

# Literal (not bound) constants, so that PostgreSQL matches the expression indexes.
_MAX_I64: ColumnElement[int] = literal_column("9223372036854775807", BigInteger)
_MINUS_ONE: ColumnElement[int] = literal_column("-1", BigInteger)
# The table's columns, not the mapped attributes: statements built from them skip the
# ORM's execution steps (list and count queries return plain rows anyway).
_T = Task.__table__
ORDERINGS: dict[str, Ordering] = {
    "created_at": Ordering("created_at", (_T.c.created_at, _T.c.task_id), descending=False),
    "-created_at": Ordering("-created_at", (_T.c.created_at, _T.c.task_id), descending=True),
    "cost_usd": Ordering("cost_usd", (_T.c.cost_micros, _T.c.task_id), descending=False),
    "-cost_usd": Ordering("-cost_usd", (_T.c.cost_micros, _T.c.task_id), descending=True),
    # Missing durations sort last both ways: the key maps NULL past the end of the order.
    "duration_seconds": Ordering(
        "duration_seconds", (func.coalesce(_T.c.duration_us, _MAX_I64), _T.c.task_id), False
    ),
    "-duration_seconds": Ordering(
        "-duration_seconds", (func.coalesce(_T.c.duration_us, _MINUS_ONE), _T.c.task_id), True
    ),
}


@dataclass(frozen=True, slots=True)
class TaskFilters:
    """The filters of `GET /api/tasks`, already validated."""

    status: Sequence[str] = ()
    agent_type: Sequence[str] = ()
    source: Sequence[str] = ()
    created_after: datetime | None = None
    created_before: datetime | None = None
    conversation_id: str | None = None
    flow_id: str | None = None
    user_id: str | None = None
    q: str | None = None

    def clauses(self, session: AsyncSession, *, indexed: bool = True) -> list[ColumnElement[bool]]:
        """The WHERE clauses; not `indexed`: `q` cannot use its trigram index (for rows
        another clause narrows down to a few)."""
        out: list[ColumnElement[bool]] = []
        multi: tuple[tuple[Any, Sequence[str]], ...] = (
            (_T.c.status, self.status),
            (_T.c.agent_type, self.agent_type),
            (_T.c.source, self.source),
        )
        for column, values in multi:
            if len(values) == 1:
                out.append(column == values[0])
            elif values:
                out.append(column.in_(list(values)))
        if self.created_after is not None:
            out.append(_T.c.created_at >= self.created_after)
        if self.created_before is not None:
            out.append(_T.c.created_at < self.created_before)
        single: tuple[tuple[Any, str | None], ...] = (
            (_T.c.conversation_id, self.conversation_id),
            (_T.c.flow_id, self.flow_id),
            (_T.c.user_id, self.user_id),
        )
        for column, value in single:
            if value is not None:
                out.append(column == value)
        if self.q:
            out.append(contains_ci(session, _T.c.input_message, self.q, indexed=indexed))
        return out


@dataclass(frozen=True, slots=True)
class AppendResult:
    first_seq: int | None
    last_seq: int
    truncated: bool


# --- reads -------------------------------------------------------------------------------


async def get_task(session: AsyncSession, task_id: str) -> Task:
    """The task, or 404."""
    task = await session.get(Task, task_id)
    if task is None:
        raise NotFound(f"No task {task_id!r}.")
    return task


def summary_columns() -> tuple[ColumnElement[Any], ...]:
    """The columns of a list row (`schemas.tasks_json.summary_from_row` reads them)."""
    return (
        *(_T.c[c] for c in SUMMARY_COLUMNS),
        func.substr(_T.c.input_message, 1, 200).label("input_preview"),
        _T.c.error.is_not(None).label("has_error"),
    )


async def list_tasks(
    session: AsyncSession, *, filters: TaskFilters, sort: str, page: PageRequest
) -> PageResult[dict[str, Any]]:
    """One page of task summaries (as `TaskSummary` documents) in the requested order."""
    await read_without_transaction(session)
    columns = summary_columns()
    stmt: Select[Any] = select(*columns)
    where = filters.clauses(session)
    if where:
        stmt = stmt.where(and_(*where))

    ordering = ORDERINGS[sort]
    if not filters.q:
        total = await count_expression(session, filters=filters)

        async def seek(offset: int) -> tuple[Select[Any], dict[str, Any]] | None:
            found = await rollup_seek(session, filters, ordering)
            return None if found is None else (found, {"seek_offset": offset})

        return await paginate(
            session,
            stmt,
            ordering,
            page,
            convert=summary_from_row,
            total_expression=total,
            seek=seek,
        )
    hint = _q_hint_key(filters)
    cache = task_search.cache_of(session)
    if cache is not None and all(
        v is None for v in (filters.conversation_id, filters.flow_id, filters.user_id)
    ):
        found = await _list_q_counted(session, cache, filters, stmt, columns, ordering, page)
        if found is not None:
            _remember_matches(hint, found.total)
            return found
    result = await _q_page(session, filters, stmt, columns, ordering, page, None, ())
    _remember_matches(hint, result.total)
    return result


async def _list_q_counted(
    session: AsyncSession,
    cache: task_search.QCountCache,
    filters: TaskFilters,
    stmt: Select[Any],
    columns: Sequence[ColumnElement[Any]],
    ordering: Ordering,
    page: PageRequest,
) -> PageResult[dict[str, Any]] | None:
    """A `q` page whose total comes from per-hour counts cached in this process, checked
    in the page's own statement (services/task_search.py); None when the window is too
    short to hold a whole hour, or the cache kept missing writes (a plain count then)."""
    unbounded = replace(filters, created_after=None, created_before=None)
    plain = unbounded.clauses(session), unbounded.clauses(session, indexed=False)
    key = (
        tuple(sorted(set(filters.status))),
        tuple(sorted(set(filters.agent_type))),
        tuple(sorted(set(filters.source))),
        filters.q,
    )
    changed: Sequence[int] = ()
    hint = _q_hint_key(filters)
    rare = _Q_MATCHES.get(hint, 0) <= FEW_MATCHES
    lo, hi = filters.created_after, filters.created_before
    for _ in range(_Q_COUNT_ATTEMPTS):
        q = task_search.plan(session, cache, key, plain, lo, hi, changed, rare=rare, fill=True)
        if q is not None and q.fill:
            # Many hours to count (a first request): counted in a statement of their
            # own, one scan, then the page is planned like any warm request; its count
            # also tells the page's plan whether q is common.
            await task_search.fill(session, cache, q, plain[0], count_first=hint not in _Q_MATCHES)
            q = task_search.plan(session, cache, key, plain, lo, hi, rare=rare)
            if q is not None and hint not in _Q_MATCHES:
                _remember_matches(hint, q.known_count)
        if q is None:
            return None
        narrowed = _by_cached_keys(session, filters, columns, ordering, page, q)
        if narrowed is not None:
            result = await paginate(
                session,
                narrowed,
                ordering,
                page,
                convert=summary_from_row,
                total_expression=q.edges,
                extras=q.extras,
            )
        else:
            result = await _q_page(
                session, filters, stmt, columns, ordering, page, q.edges, q.extras
            )
        total = task_search.settle(cache, q, result.total, result.extras)
        if total is not None:
            pages = -(-total // page.per_page) if total else 0
            return replace(result, total=total, pages=pages, extras=())
        changed = await task_search.changed_hours(session, q)
    return None


def _by_cached_keys(
    session: AsyncSession,
    filters: TaskFilters,
    columns: Sequence[ColumnElement[Any]],
    ordering: Ordering,
    page: PageRequest,
    q: task_search.QTotal,
) -> Select[Any] | None:
    """A rare q's page in created_at order, read by the keys of the matches the cache
    holds (plus every row of the hours it does not trust and of the window's edges)
    instead of through the trigram index, which reads every match; None otherwise.
    Right only if the digest in the same statement confirms the cache (see `settle`)."""
    if ordering.name not in ("created_at", "-created_at"):
        return None
    after = None
    if page.cursor is not None:
        after = decode_cursor(ordering, page.cursor)[0]
        wanted = page.per_page + 1
    else:
        offset = ((page.page or 1) - 1) * page.per_page
        if offset >= SEEK_FROM_OFFSET:
            return None
        wanted = offset + page.per_page + 1
    found = task_search.page_keys(q, ordering.descending, after, wanted)
    if found is None:
        return None
    ids, ranges = found
    raw = [and_(_T.c.created_at >= a, _T.c.created_at < b) for a, b in ranges]
    # One expanding parameter: a list coerced value by value cost more than the query.
    listed = _T.c.task_id.in_(bindparam("q_ids", ids, expanding=True, type_=String))
    where = or_(false(), listed, *raw) if ids else or_(false(), *raw)
    return select(*columns).where(*filters.clauses(session, indexed=False), where)


# A cached count found changed this many times in a row gives way to a plain count.
_Q_COUNT_ATTEMPTS = 3


async def _q_page(
    session: AsyncSession,
    filters: TaskFilters,
    stmt: Select[Any],
    columns: Sequence[ColumnElement[Any]],
    ordering: Ordering,
    page: PageRequest,
    total: ColumnElement[Any] | None,
    extras: Sequence[ColumnElement[Any]],
) -> PageResult[dict[str, Any]]:
    """A page of a `q` list, with `total` (default: the exact count of the matches) and
    `extras` carried in its statement."""
    where = filters.clauses(session)
    if _Q_MATCHES.get(_q_hint_key(filters), 0) > FEW_MATCHES:
        # A common substring: the order's index finds a page after a few hundred rows;
        # the exact count, when not given, rechecks every match in the same statement.
        return await paginate(
            session,
            stmt,
            ordering,
            page,
            convert=summary_from_row,
            total_expression=_count_raw(where) if total is None else total,
            extras=extras,
        )
    # A rare substring (or one not seen yet): walking the order's index and testing each
    # row would read tens of thousands of rows to fill one page. The matching rows are
    # found once (the trigram index on PostgreSQL; reading each to recheck it, so their
    # summary comes at no extra cost), then counted and paged from that same set, in one
    # statement.
    keys = [k.label(f"k{i}") for i, k in enumerate(ordering.keys)]
    matches = select(*columns, *keys).where(*where).cte("q_matches")
    found = Ordering(ordering.name, tuple(matches.c[k.name] for k in keys), ordering.descending)
    if total is None:
        total = select(func.count()).select_from(matches).scalar_subquery()
    return await paginate(
        session,
        select(*(matches.c[c.name] for c in columns)),
        found,
        page,
        convert=summary_from_row,
        total_expression=total,
        extras=extras,
    )


# How many tasks matched a `q` query (with its other filters) the last time it ran: only
# a hint for choosing the plan, never an answer.
_Q_MATCHES: dict[tuple[Any, ...], int] = {}
_Q_HINTS_KEPT = 4096


def _q_hint_key(f: TaskFilters) -> tuple[Any, ...]:
    return (
        tuple(f.status),
        tuple(f.agent_type),
        tuple(f.source),
        f.created_after,
        f.created_before,
        f.conversation_id,
        f.flow_id,
        f.user_id,
        (f.q or "").casefold(),
    )


def _remember_matches(key: tuple[Any, ...], total: int) -> None:
    _Q_MATCHES.pop(key, None)
    if len(_Q_MATCHES) >= _Q_HINTS_KEPT:
        del _Q_MATCHES[next(iter(_Q_MATCHES))]
    _Q_MATCHES[key] = total


async def read_without_transaction(session: AsyncSession) -> None:
    """Run this session's reads outside a transaction block (PostgreSQL).

    Under READ COMMITTED every statement takes its own snapshot, inside a transaction
    or not, so BEGIN and ROLLBACK only add two round trips to each read request. Call
    before the session's first statement.
    """
    if backend_of(session) == "postgresql":
        await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})


# More matches of `q` than this (the last time): walk the order's index (see list_tasks).
FEW_MATCHES = 5000


async def count_tasks(session: AsyncSession, *, filters: TaskFilters) -> int:
    """The exact number of tasks matching `filters` (see `count_expression`)."""
    total = await count_expression(session, filters=filters)
    return int((await session.execute(select(total))).scalar_one())


async def count_expression(session: AsyncSession, *, filters: TaskFilters) -> ColumnElement[Any]:
    """The exact number of tasks matching `filters`, as an expression of scalar subqueries.

    count(*) over a million rows takes far longer than a page. Filters the analytics
    rollups can answer exactly (status, agent_type, source, created range) are counted
    from them: whole rollup blocks plus raw counts of the partial blocks at the edges.
    Every task write records its contribution in `analytics_pending` in its own
    transaction, and the rows not folded into the rollups yet are counted with them in
    the same statement, so this stays exact.
    The selective filters (ids, `q`) are counted on their own indexes. An expression, so
    that the list query can carry it as a column (one round trip for page and total).
    """
    selective = (filters.conversation_id, filters.flow_id, filters.user_id)
    rollups_kept = session.info.get("analytics_rollups_enabled", True)
    if not rollups_kept or filters.q or any(v is not None for v in selective):
        return _count_raw(filters.clauses(session))
    lo, hi = filters.created_after, filters.created_before
    if lo is None and hi is None:
        # Every task is in exactly one block of the coarsest grain.
        return _count_blocks(filters, [(GRAINS[-1], None)])
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
        parts.append(_count_blocks(filters, blocks))
    if edges:
        window = or_(*(and_(_T.c.created_at >= a, _T.c.created_at < b) for a, b in edges))
        plain = replace(filters, created_after=None, created_before=None)
        parts.append(_count_raw([window, *plain.clauses(session)]))
    return sum(parts[1:], parts[0])


def _counts_by_rollups(session: AsyncSession, filters: TaskFilters) -> bool:
    selective = (filters.conversation_id, filters.flow_id, filters.user_id)
    return bool(
        session.info.get("analytics_rollups_enabled", True)
        and not filters.q
        and all(v is None for v in selective)
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
    if not reuses_cte_results(session):
        return None
    lo, hi = filters.created_after, filters.created_before
    if (lo is None) != (hi is None):
        oldest, newest = (
            await session.execute(select(func.min(_T.c.created_at), func.max(_T.c.created_at)))
        ).one()
        lo = oldest if lo is None else lo
        hi = hi if hi is not None else None if newest is None else newest + _ONE_US
        if lo is None or hi is None or lo >= hi:
            return select(*ordering.keys).where(false(), literal(0) == _SEEK_OFFSET)
    # The statement is the same for every offset: built once per shape (building it
    # costs more than running it).
    key = (
        backend_of(session),
        ordering.name,
        tuple(filters.status),
        tuple(filters.agent_type),
        tuple(filters.source),
        lo,
        hi,
    )
    stmt = _SEEKS.pop(key, None)
    if stmt is None:
        stmt = _seek_statement(session, filters, ordering, lo, hi)
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
        edges, whole = _split_window(lo, hi)
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
                    _count_raw([*window, *plain.clauses(session)]).label("n"),
                )
            )
        top = union_all(*parts) if len(parts) > 1 else parts[0]

    level = top.cte("seek_0")
    pick = _pick(level, _SEEK_OFFSET, ordering.descending, "pick_0")
    for i, grain in enumerate(_DESCENT, start=1):
        # The picked piece's blocks of this grain, or the piece itself when it is no
        # longer (or raw).
        kids = _block_counts(
            plain, [grain], [pick.c.grain > grain], span=(pick.c.lo_s, pick.c.hi_s)
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
        pick = _pick(level, select(pick.c.rem).scalar_subquery(), ordering.descending, f"pick_{i}")

    def scalar(column: Any) -> Any:
        return select(column).scalar_subquery()

    direction = [k.desc() if ordering.descending else k.asc() for k in ordering.keys]
    return (
        select(*ordering.keys)
        .where(
            _T.c.created_at >= scalar(epoch_seconds_to_ts(session, pick.c.lo_s)),
            _T.c.created_at < scalar(epoch_seconds_to_ts(session, pick.c.hi_s)),
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
_PENDING: Table = AnalyticsPending.__table__  # type: ignore[assignment]


def _count_raw(where: Sequence[ColumnElement[bool]]) -> ColumnElement[Any]:
    stmt = select(func.count()).select_from(_T)
    if where:
        stmt = stmt.where(and_(*where))
    return stmt.scalar_subquery()


def _count_blocks(
    filters: TaskFilters, blocks: Sequence[tuple[int, int | None]]
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
        where = [r.series == SERIES_ALL_MODELS, or_(*which)]
        for column, values in ((r.agent_type, filters.agent_type), (r.source, filters.source)):
            if values:
                where.append(column.in_(list(values)))
    else:
        # The overall row of each block: one row per block instead of one per combination.
        where = [r.series == SERIES_MARGINAL, r.agent_type == "", r.source == "", or_(*which)]
    stmt = select(func.coalesce(func.sum(sum(counted[1:], counted[0])), 0)).where(*where)
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


# Every column of a task, `metadata` under its attribute name (what `task_public` reads).
_TASK_ROW = (*(c for c in _T.c if c.name != "metadata"), _T.c.metadata.label("metadata_"))
AnyRow = Row[*tuple[Any, ...]]
_E = TaskEvent.__table__
# The same tables, typed for Core statements (`update`, `insert`).
_T_TABLE = cast(Table, Task.__table__)
_E_TABLE = cast(Table, TaskEvent.__table__)
_C_TABLE = cast(Table, TaskOutputChunk.__table__)
_C = TaskOutputChunk.__table__


async def get_task_row(session: AsyncSession, task_id: str) -> AnyRow:
    """The task as a plain row (the attributes of a `Task`), or 404."""
    row = (await session.execute(select(*_TASK_ROW).where(_T.c.task_id == task_id))).first()
    if row is None:
        raise NotFound(f"No task {task_id!r}.")
    return row


async def status_event_rows(session: AsyncSession, task_id: str) -> Sequence[AnyRow]:
    """A task's status history (status, at), oldest first."""
    stmt = select(_E.c.status, _E.c.at).where(_E.c.task_id == task_id).order_by(_E.c.event_id)
    return (await session.execute(stmt)).all()


async def chunk_rows(
    session: AsyncSession, task_id: str, *, after_seq: int = 0
) -> Sequence[AnyRow]:
    """Output chunks (seq, stream, content, created_at) with seq > after_seq, in order."""
    stmt = (
        select(_C.c.seq, _C.c.stream, _C.c.content, _C.c.created_at)
        .where(_C.c.task_id == task_id, _C.c.seq > after_seq)
        .order_by(_C.c.seq)
    )
    return (await session.execute(stmt)).all()


async def list_status_events(session: AsyncSession, task_id: str) -> Sequence[TaskEvent]:
    """A task's status history, oldest first."""
    stmt = select(TaskEvent).where(TaskEvent.task_id == task_id).order_by(TaskEvent.event_id)
    return (await session.scalars(stmt)).all()


async def list_chunks(
    session: AsyncSession, task_id: str, *, after_seq: int = 0, limit: int | None = None
) -> Sequence[TaskOutputChunk]:
    """Output chunks with seq > after_seq, in seq order."""
    stmt = (
        select(TaskOutputChunk)
        .where(TaskOutputChunk.task_id == task_id, TaskOutputChunk.seq > after_seq)
        .order_by(TaskOutputChunk.seq)
    )
    if limit is not None:
        stmt = stmt.limit(limit)
    return (await session.scalars(stmt)).all()


# --- writes ------------------------------------------------------------------------------


def _publish_status(session: AsyncSession, task: Task) -> None:
    # The same document as task_summary(task).model_dump(mode="json"), without the model.
    summary = summary_from_row(
        (
            task.task_id,
            task.status,
            task.agent_type,
            task.assigned_agent,
            task.source,
            task.user_id,
            task.conversation_id,
            task.parent_task_id,
            task.flow_id,
            task.model,
            task.cost_micros,
            task.cost_reported,
            task.input_tokens,
            task.output_tokens,
            task.cache_read_tokens,
            task.cache_write_tokens,
            task.duration_us,
            task.created_at,
            task.started_at,
            task.completed_at,
            task.updated_at,
            task.cancel_requested,
            task.output_seq,
            task.output_truncated,
            task.input_message[:200],
            task.error is not None,
        )
    )
    payload = {"type": "task_status", **summary}
    emit(session, f"task:{task.task_id}", payload)
    emit(session, "tasks", payload)


async def _locked(session: AsyncSession, task_id: str) -> Task:
    """The task row, locked for the rest of the transaction."""
    stmt = lock_for_update(session, select(Task).where(Task.task_id == task_id))
    result = await session.scalars(stmt.execution_options(populate_existing=True))
    task: Task | None = result.first()
    if task is None:
        raise NotFound(f"No task {task_id!r}.")
    return task


async def _after_write(session: AsyncSession, before: TaskSnapshot | None, task: Task) -> None:
    await session.flush()
    await task_written(session, before, snapshot(task))


def _record_status(session: AsyncSession, task: Task, at: datetime) -> None:
    session.add(TaskEvent(task_id=task.task_id, type="status", status=task.status, at=at))


def _enter_status(task: Any, status: str, now: datetime) -> None:  # a Task or its attributes
    task.status = status
    if status == "running" and task.started_at is None:
        task.started_at = now
    if status in TERMINAL_STATUSES:
        task.completed_at = now
        if task.started_at is not None:
            task.duration_us = max(0, int((now - task.started_at).total_seconds() * 1_000_000))


def _recompute_cost(task: Any, prices: PriceTable) -> None:  # a Task or its attributes
    if task.cost_reported:
        return
    task.cost_micros = prices.cost_micros(
        task.model,
        input_tokens=task.input_tokens,
        output_tokens=task.output_tokens,
        cache_read_tokens=task.cache_read_tokens,
        cache_write_tokens=task.cache_write_tokens,
    )


async def register_task(
    session: AsyncSession, *, body: TaskCreate, now: datetime, prices: PriceTable
) -> Any:
    """Create a task; its initial status is its first status event. 409 if the id exists.

    Returns the task's attributes (a plain object, like `update_task`). Written without
    the ORM: its existence check, unit-of-work flush and instance bookkeeping were a third
    of a registration's server CPU. INSERT ... ON CONFLICT DO NOTHING is the existence
    check too, so two concurrent registrations of one id give one 201 and one 409."""
    task = _new_task(body, now)
    _recompute_cost(task, prices)
    values = {("metadata" if k == "metadata_" else k): v for k, v in vars(task).items()}
    inserted = await session.execute(_insert_new_task(session), values)
    if inserted.first() is None:
        raise Conflict(f"Task {task.task_id!r} already exists.")
    await session.execute(
        _INSERT_EVENT, {"task_id": task.task_id, "type": "status", "status": task.status, "at": now}
    )
    await task_written(session, None, snapshot(task))
    _publish_status(session, task)  # type: ignore[arg-type]  # a Task's attributes
    return task


_INSERT_EVENT = insert(_E_TABLE)
_INSERT_NEW_TASK: dict[str, Any] = {}


def _insert_new_task(session: AsyncSession) -> Any:
    """INSERT INTO tasks ... ON CONFLICT (task_id) DO NOTHING RETURNING task_id, built once
    per backend (values bound at execution)."""
    backend = backend_of(session)
    stmt = _INSERT_NEW_TASK.get(backend)
    if stmt is None:
        stmt = (
            upsert(session, _T_TABLE)
            .on_conflict_do_nothing(index_elements=[_T.c.task_id])
            .returning(_T.c.task_id)
        )
        _INSERT_NEW_TASK[backend] = stmt
    return stmt


def _new_task(body: TaskCreate, now: datetime) -> SimpleNamespace:
    """The attributes of a task as `body` registers it at `now` (cost not computed yet)."""
    return SimpleNamespace(
        task_id=body.task_id or new_id(),
        status=body.status,
        agent_type=body.agent_type,
        assigned_agent=body.assigned_agent,
        source=body.source,
        input_message=body.input_message,
        result=None,
        error=None,
        user_id=body.user_id,
        conversation_id=body.conversation_id,
        parent_task_id=body.parent_task_id,
        flow_id=body.flow_id,
        model=body.model,
        cost_micros=0,
        cost_reported=False,
        input_tokens=0,
        output_tokens=0,
        cache_read_tokens=0,
        cache_write_tokens=0,
        duration_us=None,
        created_at=body.created_at or now,
        started_at=now if body.status == "running" else None,
        completed_at=None,
        updated_at=now,
        first_output_at=None,
        cancel_requested=False,
        metadata_=body.metadata,
        output_seq=0,
        output_bytes=0,
        output_truncated=False,
    )


@dataclass(frozen=True, slots=True)
class FinishedTask:
    """A task recorded after it ended (from an OpenTelemetry trace, say): how it was
    registered, when it started and ended, its output, and its final update."""

    body: TaskCreate  # status "running"; task_id given
    started_at: datetime
    completed_at: datetime
    final: TaskUpdate  # a terminal status, the figures
    chunks: Sequence[tuple[str, str]] = ()  # (stream, content)


async def record_finished_tasks(
    session: AsyncSession,
    *,
    records: Sequence[FinishedTask],
    prices: PriceTable,
    cap_bytes: int,
) -> list[Any]:
    """Record tasks that have already ended, in a few statements whatever their number.

    Each gets the row and the status history (running at `started_at`, its final status
    at `completed_at`) that `register_task`, `append_output` and `update_task` one after
    the other would give it, the state machine and the price table applied by the same
    code; the hooks see it once, new and final, and it is announced once: its
    `task_output` events, then one `task_status` with its final state. A task whose id
    exists is left alone. Returns the tasks recorded (plain objects)."""
    planned = []
    for record in records:
        task = _new_task(record.body, record.started_at)
        _recompute_cost(task, prices)
        stored, size, truncated = _fit_output(record.chunks, cap_bytes)
        if stored:
            task.output_seq, task.output_bytes = len(stored), size
            task.first_output_at = record.completed_at
        task.output_truncated = truncated
        _apply_update(task, task.task_id, record.final, record.completed_at, prices)
        planned.append((task, record, stored))
    if not planned:
        return []
    values = [
        {("metadata" if k == "metadata_" else k): v for k, v in vars(task).items()}
        for task, _, _ in planned
    ]
    inserted = {row.task_id for row in await session.execute(_insert_new_task(session), values)}
    done = [p for p in planned if p[0].task_id in inserted]
    if not done:
        return []
    events = []
    chunks = []
    for task, record, stored in done:
        events.append(
            {"task_id": task.task_id, "type": "status", "status": "running", "at": task.started_at}
        )
        events.append(
            {
                "task_id": task.task_id,
                "type": "status",
                "status": task.status,
                "at": task.completed_at,
            }
        )
        chunks += [
            {
                "task_id": task.task_id,
                "seq": i,
                "stream": st,
                "content": c,
                "created_at": record.completed_at,
            }
            for i, (st, c) in enumerate(stored, start=1)
        ]
    await session.execute(_INSERT_EVENT, events)
    if chunks:
        await session.execute(insert(_C_TABLE), chunks)
    for task, record, stored in done:
        await task_written(session, None, snapshot(task))
        if stored:
            _emit_output(session, task.task_id, 1, stored, record.completed_at)
        _publish_status(session, task)  # type: ignore[arg-type]  # a Task's attributes
    return [task for task, _, _ in done]


def _fit_output(
    chunks: Sequence[tuple[str, str]], cap_bytes: int
) -> tuple[list[tuple[str, str]], int, bool]:
    """The chunks a new task's log keeps under its cap (as `append_output` cuts them),
    their size, and whether any content was dropped."""
    room = cap_bytes
    stored: list[tuple[str, str]] = []
    for stream, content in chunks:
        size = len(content.encode())
        if size <= room:
            stored.append((stream, content))
            room -= size
            continue
        head = content.encode()[: max(room, 0)].decode("utf-8", errors="ignore")
        if head:
            stored.append((stream, head))
            room -= len(head.encode())
        return stored, cap_bytes - room, True
    return stored, cap_bytes - room, False


async def update_task(
    session: AsyncSession, *, task_id: str, body: TaskUpdate, now: datetime, prices: PriceTable
) -> Any:
    """Apply a producer update: a legal status move and/or new metrics, result, metadata.

    Returns the task as it is now (a `Task`, or a plain object with its attributes)."""
    if identity_key(Task, task_id) in session.identity_map:
        # The caller holds the ORM object: change it, so that it stays true.
        return await _update_task_orm(session, task_id, body, now, prices)
    # Without the ORM (its load and unit-of-work flush were much of this request's CPU):
    # the locked row is read into a plain object that the same rules below change, and
    # the changed columns are written with one UPDATE.
    stmt = lock_for_update(session, select(*_TASK_ROW).where(_T.c.task_id == task_id))
    row = (await session.execute(stmt)).first()
    if row is None:
        raise NotFound(f"No task {task_id!r}.")
    task = SimpleNamespace(**row._mapping)
    before = snapshot(task)
    changed, moved = _apply_update(task, task_id, body, now, prices)
    if not changed:
        return task
    await _store_changes(session, task, row, moved=moved, now=now)
    await task_written(session, before, snapshot(task))
    _publish_status(session, task)  # type: ignore[arg-type]  # a Task's attributes
    return task


async def _store_changes(
    session: AsyncSession, task: SimpleNamespace, row: AnyRow, *, moved: bool, now: datetime
) -> None:
    """Write the attributes of `task` that differ from `row` (its locked row as read, by
    `_TASK_ROW`) with one UPDATE, and a status event when its status moved."""
    old = row._mapping
    values = {
        ("metadata" if name == "metadata_" else name): value
        for name, value in vars(task).items()
        if value != old[name]
    }
    await session.execute(update(_T_TABLE).where(_T.c.task_id == task.task_id).values(values))
    if moved:
        await session.execute(
            _INSERT_EVENT,
            {"task_id": task.task_id, "type": "status", "status": task.status, "at": now},
        )


def _apply_update(
    task: Any, task_id: str, body: TaskUpdate, now: datetime, prices: PriceTable
) -> tuple[bool, bool]:
    """Change `task` (a `Task` or its attributes) as `body` says: (changed, status moved
    so a status event is due). 409 for a move the state machine forbids."""
    fields = body.model_fields_set
    changed = moved = False
    if body.status is not None and body.status != task.status:
        if body.status not in ALLOWED_MOVES[task.status]:
            raise Conflict(
                f"Task {task_id!r} is {task.status}; it cannot move to {body.status}.",
                extra={"current_status": task.status},
            )
        _enter_status(task, body.status, now)
        changed = moved = True
    for name in ("assigned_agent", "result", "error", "model"):
        if name in fields and getattr(body, name) != getattr(task, name):
            setattr(task, name, getattr(body, name))
            changed = True
    for name in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens"):
        value = getattr(body, name)
        if value is not None and value != getattr(task, name):
            setattr(task, name, value)
            changed = True
    if body.cost_usd is not None:
        micros = usd_to_micros(body.cost_usd)
        if not task.cost_reported or micros != task.cost_micros:
            task.cost_reported = True
            task.cost_micros = micros
            changed = True
    if body.metadata is not None and body.metadata != task.metadata_:
        task.metadata_ = body.metadata
        changed = True
    if changed:
        _recompute_cost(task, prices)
        task.updated_at = now
    return changed, moved


async def _update_task_orm(
    session: AsyncSession, task_id: str, body: TaskUpdate, now: datetime, prices: PriceTable
) -> Task:
    task = await _locked(session, task_id)
    before = snapshot(task)
    changed, moved = _apply_update(task, task_id, body, now, prices)
    if moved:
        _record_status(session, task, now)
    if changed:
        await _after_write(session, before, task)
        _publish_status(session, task)
    return task


async def append_output(
    session: AsyncSession,
    *,
    task_id: str,
    chunks: Sequence[OutputChunkIn],
    now: datetime,
    cap_bytes: int,
    max_chunk_bytes: int,
    after_alone: bool = False,
) -> AppendResult:
    """Store chunks with the next gap-free seqs; content past the task's cap is dropped.

    The seq counter lives on the task row, which is locked for the transaction, so that
    concurrent appends (from any replica) are numbered in the order they commit.
    `after_alone`: `append_output_alone` was tried first and wrote nothing.
    """
    sizes = [len(c.content.encode()) for c in chunks]
    if any(size > max_chunk_bytes for size in sizes):
        raise PayloadTooLarge(f"A chunk's content is over {max_chunk_bytes} bytes.")
    whole = await _append_whole(session, task_id, chunks, sum(sizes), now, cap_bytes)
    if whole is not None:
        fast, after = whole
        _note_plain(task_id, after, after_alone=after_alone)
        return fast
    task = await _locked(session, task_id)
    if task.status in TERMINAL_STATUSES:
        raise Conflict(f"Task {task_id!r} is {task.status}; it takes no more output.")

    room = cap_bytes - task.output_bytes
    stored: list[tuple[str, str]] = []
    truncated = task.output_truncated
    for chunk, size in zip(chunks, sizes, strict=True):
        if truncated:
            break
        if size <= room:
            stored.append((chunk.stream, chunk.content))
            room -= size
            continue
        # Keep what fits, cut on a character boundary, and drop everything after it.
        head = chunk.content.encode()[: max(room, 0)].decode("utf-8", errors="ignore")
        if head:
            stored.append((chunk.stream, head))
            room -= len(head.encode())
        truncated = True

    if not stored:
        if truncated and not task.output_truncated:
            task.output_truncated = True
            task.updated_at = now
        return AppendResult(first_seq=None, last_seq=task.output_seq, truncated=truncated)

    before = snapshot(task)
    first_seq = task.output_seq + 1
    rows = [
        {"task_id": task_id, "seq": first_seq + i, "stream": s, "content": c, "created_at": now}
        for i, (s, c) in enumerate(stored)
    ]
    await session.execute(insert(TaskOutputChunk), rows)
    task.output_seq = first_seq + len(rows) - 1
    task.output_bytes = cap_bytes - room
    task.output_truncated = truncated
    if task.first_output_at is None:
        task.first_output_at = now
    task.updated_at = now
    await _after_write(session, before, task)
    _emit_output(session, task_id, first_seq, stored, now)
    if not truncated:
        _note_plain(task_id, task, after_alone=False)
    return AppendResult(first_seq=first_seq, last_seq=task.output_seq, truncated=truncated)


def _output_events(
    task_id: str, first_seq: int, stored: Sequence[tuple[str, str]], now: datetime
) -> list[PendingEvent]:
    channel = f"task:{task_id}"
    stamp = format_ts(now)
    return [
        (
            channel,
            {
                "type": "task_output",
                "task_id": task_id,
                "seq": first_seq + i,
                "stream": stream,
                "content": content,
                "created_at": stamp,
            },
        )
        for i, (stream, content) in enumerate(stored)
    ]


def _emit_output(
    session: AsyncSession,
    task_id: str,
    first_seq: int,
    stored: Sequence[tuple[str, str]],
    now: datetime,
) -> None:
    for channel, payload in _output_events(task_id, first_seq, stored, now):
        emit(session, channel, payload)


_SNAPSHOT_COLUMNS = tuple(_T.c[name] for name in TaskSnapshot.__slots__)
_SNAPSHOT_SQL = ", ".join(c.name for c in _SNAPSHOT_COLUMNS)
_TERMINAL_SQL = ", ".join(f"'{s}'" for s in sorted(TERMINAL_STATUSES))


# The common append (a running task that already has output, and whose log has room for
# every chunk) in one statement: the UPDATE both takes the row lock and moves the seq
# counter, so concurrent appends still get contiguous, gap-free seqs in commit order.
def _append_sql(*, returning: str, extra_where: str = "") -> str:
    # Interpolated: column names and status literals from our own constants, no input.
    return f"""
    WITH t AS (
        UPDATE tasks
        SET output_seq = output_seq + CAST(:n AS integer),
            output_bytes = output_bytes + CAST(:size AS bigint),
            updated_at = CAST(:now AS timestamptz)
        WHERE task_id = CAST(:task_id AS varchar)
          AND status NOT IN ({_TERMINAL_SQL})
          AND NOT output_truncated
          AND first_output_at IS NOT NULL
          AND output_bytes + CAST(:size AS bigint) <= CAST(:cap AS bigint){extra_where}
        RETURNING {returning}
    ), c AS (
        INSERT INTO task_output_chunks (task_id, seq, stream, content, created_at)
        SELECT CAST(:task_id AS varchar), t.output_seq - CAST(:n AS integer) + u.ord,
               u.stream, u.content, CAST(:now AS timestamptz)
        FROM t, unnest(CAST(:streams AS varchar[]), CAST(:contents AS text[]))
            WITH ORDINALITY AS u(stream, content, ord)
    )
    SELECT {returning} FROM t
    """  # noqa: S608


_APPEND_WHOLE_PG = text(_append_sql(returning=_SNAPSHOT_SQL)).columns(*_SNAPSHOT_COLUMNS)
# The same append for a task in no conversation (see `append_output_alone`). Its
# conversation_id is checked on the row the UPDATE locks (the newest version when it
# waited), so a task linked meanwhile goes the long way.
_APPEND_ALONE_PG = text(
    _append_sql(
        returning="output_seq",
        extra_where="""
          AND conversation_id IS NULL
          AND NOT EXISTS (
              SELECT 1 FROM conversation_tasks m WHERE m.task_id = tasks.task_id)""",
    )
).columns(_T.c.output_seq)

# Which tasks' appends are tried alone (per process, bounded, a hint only: the statement
# decides). True: its last append went through the transaction and left it plain
# (running, with output, in no conversation), or was written alone. False: a common
# append of it needed the transaction all the same (a conversation's task, whose hook
# runs on every write): not tried alone again. Unknown tasks (each one's first output
# among them) go straight to the transaction, so that a failed attempt, one wasted round
# trip, is rare.
_ALONE: dict[str, bool] = {}
_ALONE_MAX = 8192


def _remember_alone(task_id: str, alone: bool) -> None:
    if task_id not in _ALONE and len(_ALONE) >= _ALONE_MAX:
        del _ALONE[next(iter(_ALONE))]
    _ALONE[task_id] = alone


async def store_output(
    db: Database,
    *,
    task_id: str,
    chunks: Sequence[OutputChunkIn],
    now: datetime,
    cap_bytes: int,
    max_chunk_bytes: int,
) -> AppendResult:
    """Append output for the producer API: the one-statement form when it applies
    (`append_output_alone`), else `append_output` in a transaction of its own, with the
    hooks (and the errors: unknown or finished task, oversize chunk)."""
    alone = worth_trying_alone(db, task_id)
    if alone:
        result = await append_output_alone(
            db,
            task_id=task_id,
            chunks=chunks,
            now=now,
            cap_bytes=cap_bytes,
            max_chunk_bytes=max_chunk_bytes,
        )
        if result is not None:
            return result
    async with db.write() as session:
        return await append_output(
            session,
            task_id=task_id,
            chunks=chunks,
            now=now,
            cap_bytes=cap_bytes,
            max_chunk_bytes=max_chunk_bytes,
            after_alone=alone,
        )


def worth_trying_alone(db: Database, task_id: str) -> bool:
    """Whether `append_output_alone` is worth a try for this task (see `_ALONE`)."""
    return db.writes_alone and PLAIN_APPENDS_NEED_NO_HOOKS and _ALONE.get(task_id, False)


async def append_output_alone(
    db: Database,
    *,
    task_id: str,
    chunks: Sequence[OutputChunkIn],
    now: datetime,
    cap_bytes: int,
    max_chunk_bytes: int,
) -> AppendResult | None:
    """The common append as one statement that commits on its own (PostgreSQL); None
    (nothing written) when it is not the common case: then call `append_output` in a
    transaction, which also answers the errors.

    The common case is that of `_append_whole` for a task in no conversation: then no
    hook reacts to the append (`task_hooks.PLAIN_APPENDS_NEED_NO_HOOKS`), and BEGIN, the
    hooks' membership SELECT and COMMIT (three of its four round trips) are not needed.
    The UPDATE still takes the task row's lock and moves the seq counter in the same
    statement as the INSERT, so seqs stay gap-free and in commit order; the chunks are
    durable when the statement returns, before anything is published or answered.
    Only for a task `worth_trying_alone` (the caller, `store_output`, asks it).
    """
    sizes = [len(c.content.encode()) for c in chunks]
    if not chunks or any(size > max_chunk_bytes for size in sizes):
        return None
    n = len(chunks)
    params = {
        "task_id": task_id,
        "n": n,
        "size": sum(sizes),
        "now": now,
        "cap": cap_bytes,
        "streams": [c.stream for c in chunks],
        "contents": [c.content for c in chunks],
    }
    async with db.alone() as conn:
        last_seq = (await conn.execute(_APPEND_ALONE_PG, params)).scalar()
    if last_seq is None:
        _ALONE.pop(task_id, None)  # the transaction tells what it is (see append_output)
        return None
    first_seq = last_seq - n + 1
    stored = [(c.stream, c.content) for c in chunks]
    await db.publish(_output_events(task_id, first_seq, stored, now))
    return AppendResult(first_seq=first_seq, last_seq=last_seq, truncated=False)


def _note_plain(task_id: str, after: TaskSnapshot | Task, *, after_alone: bool) -> None:
    """After an append in a transaction: whether the next one may be tried alone."""
    if after_alone:
        # A common append (it was written by `_append_whole` or found nothing special)
        # that the single statement refused: the task is in a conversation.
        _remember_alone(task_id, False)
    elif (
        after.conversation_id is None
        and after.status not in TERMINAL_STATUSES
        and after.first_output_at is not None
        and _ALONE.get(task_id) is None
    ):
        _remember_alone(task_id, True)


async def _append_whole(
    session: AsyncSession,
    task_id: str,
    chunks: Sequence[OutputChunkIn],
    size: int,
    now: datetime,
    cap_bytes: int,
) -> tuple[AppendResult, TaskSnapshot] | None:
    """Store every chunk without the ORM and in as few round trips as possible, when
    nothing about the append is special; None (nothing written) sends it the long way:
    missing or finished task, first output, cap reached, or a caller holding the row."""
    if identity_key(Task, task_id) in session.identity_map:
        return None
    n = len(chunks)
    stored = [(c.stream, c.content) for c in chunks]
    if backend_of(session) == "postgresql":
        params = {
            "task_id": task_id,
            "n": n,
            "size": size,
            "now": now,
            "cap": cap_bytes,
            "streams": [s for s, _ in stored],
            "contents": [c for _, c in stored],
        }
        row = (await session.execute(_APPEND_WHOLE_PG, params)).first()
    else:
        moved = (
            update(Task)
            .where(
                _T.c.task_id == task_id,
                _T.c.status.not_in(TERMINAL_STATUSES),
                _T.c.output_truncated.is_(False),
                _T.c.first_output_at.is_not(None),
                _T.c.output_bytes + size <= cap_bytes,
            )
            .values(
                output_seq=_T.c.output_seq + n,
                output_bytes=_T.c.output_bytes + size,
                updated_at=now,
            )
            .returning(*_SNAPSHOT_COLUMNS)
        )
        row = (await session.execute(moved)).first()
        if row is not None:
            base = row.output_seq - n
            # Rows as execution parameters: a multi-row `.values(rows)` has no cache key
            # and would be compiled on every append.
            rows = [
                {"task_id": task_id, "seq": base + i, "stream": s, "content": c, "created_at": now}
                for i, (s, c) in enumerate(stored, start=1)
            ]
            await session.execute(insert(_C_TABLE), rows)
    if row is None:
        return None
    after = TaskSnapshot(**row._mapping)
    await task_written(session, replace(after, output_seq=after.output_seq - n), after)
    first_seq = after.output_seq - n + 1
    _emit_output(session, task_id, first_seq, stored, now)
    return AppendResult(first_seq=first_seq, last_seq=after.output_seq, truncated=False), after


async def claim_task(
    session: AsyncSession, *, agent_types: Sequence[str], agent: str, now: datetime
) -> Any:
    """Atomically move the oldest queued task of these types to running for `agent`: the
    task's attributes (a plain object, like `update_task`), or None when none is queued.

    The oldest row is read and locked in one statement (SKIP LOCKED: concurrent claimers
    take different tasks) and written without the ORM."""
    pick = (
        select(*_TASK_ROW)
        .where(
            _T.c.status == "queued",
            _T.c.agent_type.in_(list(agent_types)),
            # Budgets on hold: part of this statement, so no check can go stale (holds.py).
            not_held(_T, now),
        )
        .order_by(_T.c.created_at, _T.c.task_id)
        .limit(1)
    )
    row = (await session.execute(lock_skip_locked(session, pick))).first()
    if row is None:
        return None
    task = SimpleNamespace(**row._mapping)
    before = snapshot(task)
    task.assigned_agent = agent
    _enter_status(task, "running", now)
    task.updated_at = now
    await _store_changes(session, task, row, moved=True, now=now)
    await task_written(session, before, snapshot(task))
    _publish_status(session, task)  # type: ignore[arg-type]  # a Task's attributes
    return task


async def cancel_task(session: AsyncSession, *, task_id: str, now: datetime) -> Task:
    """Cancel a queued task now; ask a running task's agent to stop; 409 when already ended."""
    task = await _locked(session, task_id)
    if task.status in TERMINAL_STATUSES:
        raise Conflict(
            f"Task {task_id!r} is already {task.status}.", extra={"current_status": task.status}
        )
    before = snapshot(task)
    if task.status == "queued":
        _enter_status(task, "cancelled", now)
        _record_status(session, task, now)
    elif not task.cancel_requested:
        task.cancel_requested = True
        emit(
            session,
            f"task:{task_id}",
            {"type": "task_cancel_requested", "task_id": task_id, "requested_at": format_ts(now)},
        )
    else:
        return task
    task.updated_at = now
    await _after_write(session, before, task)
    _publish_status(session, task)
    return task
