"""Task lists: one page of summaries in the requested order, with its exact total.

Totals without `q` come from the rollups (`counts`); a `q` list's total from the per-hour
match counts cached per process (`search`), checked in the page's own statement.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, String, and_, bindparam, false, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

import dashboard_api.services.tasks.search as task_search
from dashboard_api.bounded import BoundedCache
from dashboard_api.db.dialect import dialect_of
from dashboard_api.db.paging import (
    SEEK_FROM_OFFSET,
    Ordering,
    PageRequest,
    PageResult,
    decode_cursor,
    paginate,
)
from dashboard_api.services.analytics.layout import EPOCH
from dashboard_api.services.tasks.counts import (
    HORIZON_ATTEMPTS,
    HORIZON_MOVED,
    count_expression,
    count_raw,
    forget_pruned_before,
    pruned_before,
    rollup_seek,
)
from dashboard_api.services.tasks.filters import ORDERINGS, TASKS, TaskFilters
from dashboard_api.services.tasks.search_hours import QCountCache, cache_of
from dashboard_api.services.tasks.summaries import (
    PYTHON_READER,
    SummaryReader,
    summary_reader,
)

_T = TASKS


async def list_tasks(
    session: AsyncSession, *, filters: TaskFilters, sort: str, page: PageRequest
) -> PageResult[Any]:
    """One page of task summaries in the requested order: its items `TaskSummary`
    documents, or their JSON text as `orjson.Fragment`s where the database writes it
    (`summaries.summary_reader`); orjson writes either as the same bytes.

    Its statements need no snapshot in common (under READ COMMITTED each takes its own
    anyway): read it through `Database.read_statements`, without BEGIN and ROLLBACK."""
    ordering = ORDERINGS[sort]
    cache = cache_of(session)
    reader = summary_reader(session)
    if not filters.q and filters.beyond_rollups and cache is not None:
        # An id or failure reason filter: count(*) on its index reads every match (a
        # user's 250,000 tasks at 10M); its per-hour counts are cached like a q's.
        found = await _list_q_counted(
            session, cache, filters, _kept_statement(session, filters, reader),
            reader, ordering, page,
        )  # fmt: skip
        if found is not None:
            return found
    if not filters.q:

        async def seek(offset: int) -> tuple[Select[Any], dict[str, Any]] | None:
            found = await rollup_seek(session, filters, ordering)
            return None if found is None else (found, {"seek_offset": offset})

        for _ in range(HORIZON_ATTEMPTS):
            counted, total, reusable = await _counted_statement(session, filters, reader)
            result = await paginate(
                session,
                counted,
                ordering,
                page,
                convert=reader.convert,
                total_expression=total,
                seek=seek,
                reusable=reusable,
            )
            if result.total != HORIZON_MOVED:
                return result
            forget_pruned_before(session)
        stmt = _list_statement(session, filters, reader.columns)
        # Prunes kept moving the horizon: count the rows themselves.
        return await paginate(
            session,
            stmt,
            ordering,
            page,
            convert=reader.convert,
            total_expression=count_raw(filters.clauses(session)),
        )
    stmt = _kept_statement(session, filters, reader)
    hint = _q_hint_key(filters)
    if cache is not None:
        found = await _list_q_counted(session, cache, filters, stmt, reader, ordering, page)
        if found is not None:
            _Q_MATCHES.put(hint, found.total)
            return found
    result = await _q_page(session, filters, stmt, reader, ordering, page, None, ())
    _Q_MATCHES.put(hint, result.total)
    return result


def _list_statement(
    session: AsyncSession, filters: TaskFilters, columns: Sequence[ColumnElement[Any]]
) -> Select[Any]:
    # FROM named: a reader's column may be SQL text that names no table to SQLAlchemy.
    stmt: Select[Any] = select(*columns).select_from(_T)
    where = filters.clauses(session)
    return stmt.where(and_(*where)) if where else stmt


def _filter_values(filters: TaskFilters) -> tuple[Any, ...]:
    """Every filter value but `q`, hashable: the key of a statement kept for them."""
    return (
        tuple(filters.status),
        tuple(filters.agent_type),
        tuple(filters.source),
        tuple(filters.failure_reason),
        filters.conversation_id,
        filters.flow_id,
        filters.user_id,
        filters.created_after,
        filters.created_before,
    )


# The list statements of the lists counted by cached per-hour counts (ids, failure
# reason, `q`), kept per process and filter values like `_STATEMENTS` below: with the
# total's expressions `search.plan` keeps, a warm page's statement is kept whole.
_KEPT: BoundedCache[tuple[Any, ...], Select[Any]] = BoundedCache(256)


def _kept_statement(
    session: AsyncSession, filters: TaskFilters, reader: SummaryReader
) -> Select[Any]:
    """`_list_statement` of `filters` with the reader's columns, the same object for the
    same filters."""
    key = (dialect_of(session), reader, *_filter_values(filters), filters.q)
    found = _KEPT.get_recent(key)
    if found is None:
        found = _KEPT.put(key, _list_statement(session, filters, reader.columns))
    return found


# The statement and total expression of lists without `q` (the dashboard's views, its
# filters, a closed created range): nothing in them depends on the time, so each is built
# once per process and filter values and reused, with the page statements `paginate`
# makes of them. Building them and SQLAlchemy's cache key of a new statement object cost
# ~1.5 ms CPU of a first page's ~2.2 in its service call; a statement object reused
# keeps its cache key.
_STATEMENTS: BoundedCache[tuple[Any, ...], tuple[Select[Any], ColumnElement[Any]]] = BoundedCache(
    256
)


async def _counted_statement(
    session: AsyncSession, filters: TaskFilters, reader: SummaryReader
) -> tuple[Select[Any], ColumnElement[Any], bool]:
    """The list statement of `filters` (no `q`), its total expression, and whether both
    are reused across requests (see `_STATEMENTS`)."""
    horizon = await pruned_before(session)
    # The rows are read from where any task is left (`Horizon.empty_before`): an order
    # that starts at the oldest does not walk the index entries of pruned rows. The total
    # checks the horizon in the same statement, so a page read past a task inserted
    # before it since is read again (HORIZON_MOVED).
    listed = filters
    if horizon is not None and horizon.empty_before is not None:
        empty = EPOCH + timedelta(seconds=horizon.empty_before)
        if filters.created_after is None or filters.created_after < empty:
            listed = replace(filters, created_after=empty)
    if (filters.created_after is None) != (filters.created_before is None):
        # A range open at one end is counted up to the oldest or newest task: built anew.
        stmt = _list_statement(session, listed, reader.columns)
        return stmt, await count_expression(session, filters=filters), False
    key = (
        dialect_of(session),
        reader,
        session.info.get("analytics_rollups_enabled", True),
        horizon,
        # A closed range's count is fixed by its ends (rollup blocks and raw edges): kept
        # like the rest, it serves the pages of one window and its refreshes.
        *_filter_values(filters),
    )
    found = _STATEMENTS.get_recent(key)
    if found is None:
        stmt = _list_statement(session, listed, reader.columns)
        found = _STATEMENTS.put(key, (stmt, await count_expression(session, filters=filters)))
    return found[0], found[1], True


async def _list_q_counted(
    session: AsyncSession,
    cache: QCountCache,
    filters: TaskFilters,
    stmt: Select[Any],
    reader: SummaryReader,
    ordering: Ordering,
    page: PageRequest,
) -> PageResult[Any] | None:
    """A `q` (or id, or failure reason) page whose total comes from per-hour counts
    cached in this process, checked in the page's own statement (`search`); None when
    the window is too short to hold a whole hour, or the cache kept missing writes (a
    plain count then). The ids and the failure reason never change but with a status
    (`failure_reason`), so each hour's token covers them as it covers `q`."""
    unbounded = replace(filters, created_after=None, created_before=None)
    plain = unbounded.clauses(session), unbounded.clauses(session, indexed=False)
    key = (
        tuple(sorted(set(filters.status))),
        tuple(sorted(set(filters.agent_type))),
        tuple(sorted(set(filters.source))),
        filters.q,
        tuple(sorted(set(filters.failure_reason))),
        filters.conversation_id,
        filters.flow_id,
        filters.user_id,
    )
    changed: Sequence[int] = ()
    hint = _q_hint_key(filters)
    # Without q the id's index walks the order already: no match keys to keep.
    rare = bool(filters.q) and _Q_MATCHES.get(hint, 0) <= FEW_MATCHES
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
                _Q_MATCHES.put(hint, q.known_count)
        if q is None:
            return None
        narrowed = _by_cached_keys(session, filters, reader.columns, ordering, page, q)
        if narrowed is not None:
            result = await paginate(
                session,
                narrowed,
                ordering,
                page,
                convert=reader.convert,
                total_expression=q.edges,
                extras=q.extras,
            )
        else:
            result = await _q_page(
                session, filters, stmt, reader, ordering, page, q.edges, q.extras
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
    return select(*columns).select_from(_T).where(*filters.clauses(session, indexed=False), where)


# A cached count found changed this many times in a row gives way to a plain count.
_Q_COUNT_ATTEMPTS = 3


async def _q_page(
    session: AsyncSession,
    filters: TaskFilters,
    stmt: Select[Any],
    reader: SummaryReader,
    ordering: Ordering,
    page: PageRequest,
    total: ColumnElement[Any] | None,
    extras: Sequence[ColumnElement[Any]],
) -> PageResult[Any]:
    """A page of a `q` list, with `total` (default: the exact count of the matches) and
    `extras` carried in its statement."""
    where = filters.clauses(session)
    if not filters.q or _Q_MATCHES.get(_q_hint_key(filters), 0) > FEW_MATCHES:
        # A common substring (or none): the order's index finds a page after a few
        # hundred rows;
        # the exact count, when not given, rechecks every match in the same statement.
        return await paginate(
            session,
            stmt,
            ordering,
            page,
            convert=reader.convert,
            total_expression=count_raw(where) if total is None else total,
            extras=extras,
            # A planned total's expressions are kept (`search.plan`), as `stmt` is.
            reusable=total is not None,
        )
    # A rare substring (or one not seen yet): walking the order's index and testing each
    # row would read tens of thousands of rows to fill one page. The matching rows are
    # found once (the trigram index on PostgreSQL; reading each to recheck it, so their
    # summary comes at no extra cost), then counted and paged from that same set, in one
    # statement. Python writes these documents: the database would write the text of
    # every match, not only the page's.
    columns = PYTHON_READER.columns
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
        convert=PYTHON_READER.convert,
        total_expression=total,
        extras=extras,
    )


# How many tasks matched a `q` query (with its other filters) the last time it ran: only
# a hint for choosing the plan, never an answer.
_Q_MATCHES: BoundedCache[tuple[Any, ...], int] = BoundedCache(4096)


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
        tuple(f.failure_reason),
        (f.q or "").casefold(),
    )


# More matches of `q` than this (the last time): walk the order's index (see list_tasks).
FEW_MATCHES = 5000


async def count_tasks(session: AsyncSession, *, filters: TaskFilters) -> int:
    """The exact number of tasks matching `filters` (see `count_expression`)."""
    for _ in range(HORIZON_ATTEMPTS):
        total = await count_expression(session, filters=filters)
        found = int((await session.execute(select(total))).scalar_one())
        if found != HORIZON_MOVED:
            return found
        forget_pruned_before(session)
    return int((await session.execute(select(count_raw(filters.clauses(session))))).scalar_one())
