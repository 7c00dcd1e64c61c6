"""Folding pending rollup contributions into the rollups, in batches.

Task writes append their contributions to `analytics_pending` (see
`rollups.apply_task_write`). A fold takes a batch of them, sums them per rollup
row, and adds the sums to the rollups in the same transaction that deletes them: a
thousand registrations of the current blocks become one upsert of a few dozen rows, and
no task write ever waits for another one's rollup rows. Each row's `changes` grows by
the number of contributions folded into it, so that a block's `changes` plus its pending
rows stays the same across a fold (the token `services.tasks.search` checks).

Who folds: the `analytics-fold` periodic job (`fold_waiting`, on one replica at a time,
see jobs/), and every analytics read when its first statement finds pending rows
(`execute_folded`), so that an answer includes every write acknowledged before it was
asked. Task-list totals do not fold: they add the pending rows to what they count
(`services.tasks`), in the same statement, without a lock.

One fold runs at a time across all replicas (a PostgreSQL advisory lock; SQLite's write
transactions are serialized anyway). A fold either commits (rows gone, rollups updated)
or rolls back (both unchanged), so a crash never loses or doubles a contribution.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from sqlalchemy import ScalarSelect, delete, func, select, true
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard_api.bounded import BoundedCache
from dashboard_api.db.dialect import dialect_of
from dashboard_api.db.engine import Database
from dashboard_api.db.models.analytics import PENDING_TABLE
from dashboard_api.services.analytics.layout import FOLD_LOCK_KEY
from dashboard_api.services.analytics.rollups import apply_deltas, contribution_of_pending, deltas

# Rows per fold transaction: large enough that a backlog drains in a few transactions,
# small enough that one holds its locks for well under a second.
BATCH = 5000
_P = PENDING_TABLE


async def _lock(session: AsyncSession, *, wait: bool) -> bool:
    """Take the fold lock for this transaction; False if `wait` is off and it is taken."""
    if wait:
        stmt = dialect_of(session).advisory_xact_lock_sql(FOLD_LOCK_KEY)
        if stmt is not None:
            await session.execute(stmt)
        return True
    stmt = dialect_of(session).try_advisory_xact_lock_sql(FOLD_LOCK_KEY)
    return stmt is None or bool(await session.scalar(stmt))


async def fold_batch(
    session: AsyncSession, *, wait: bool = True, limit: int = BATCH, upto: int | None = None
) -> int | None:
    """Fold up to `limit` pending rows (with ids up to `upto`) in the caller's write
    transaction; how many it folded, or None when `wait` is off and another fold holds
    the lock."""
    if not await _lock(session, wait=wait):
        return None
    oldest = select(_P.c.id).order_by(_P.c.id).limit(limit)
    if upto is not None:
        oldest = oldest.where(_P.c.id <= upto)
    taken = (
        await session.execute(
            delete(_P)
            .where(_P.c.id.in_(oldest.scalar_subquery()))
            .returning(*(c for c in _P.c if c.name != "id"))
        )
    ).all()
    if taken:
        rows, hrows = deltas(
            ((row.sign, contribution_of_pending(row)) for row in taken), changes=True
        )
        await apply_deltas(session, rows, hrows)
    return len(taken)


async def fold_pending(db: Database, *, wait: bool = True, upto: int | None = None) -> int:
    """Fold every pending row (with ids up to `upto`), batch by batch; how many. Without
    `wait`, gives up at once when another fold is running (it will fold them)."""
    folded = 0
    while True:
        async with db.write() as session:
            n = await fold_batch(session, wait=wait, upto=upto)
        if n is None:
            return folded
        folded += n
        if n < BATCH:
            return folded


def newest_pending_sql() -> ScalarSelect[Any]:
    """The id of the newest contribution waiting to be folded (NULL if none; one index
    probe), as a column a reader adds to its own first statement: then
    `fold_pending(db, upto=that id)` before reading the rollups."""
    return select(func.max(_P.c.id)).scalar_subquery()


async def newest_pending(db: Database, session: AsyncSession | None = None) -> int | None:
    """The id of the newest contribution waiting to be folded, if any (one index probe),
    read in `session` when given."""
    if session is not None:
        newest = await session.scalar(select(func.max(_P.c.id)))
    else:
        # One statement: in autocommit on PostgreSQL, without BEGIN and ROLLBACK (two of
        # the ~11 round trips of a background fold tick, a cost the upkeep adds per tick).
        async with db.read_statements() as own:
            newest = await own.scalar(select(func.max(_P.c.id)))
    return None if newest is None else int(newest)


async def fold_waiting(db: Database) -> int:
    """One background fold (the `analytics-fold` periodic job): a read when nothing is
    pending (the usual case), else fold it, unless another fold is running (it will)."""
    if await newest_pending(db) is None:
        return 0
    return await fold_pending(db, wait=False)


# --- the check in a read's first statement -----------------------------------------------
# An analytics request that checked for pending rows in a statement of its own paid a
# round trip for it (an empty check, nearly always). Its first statement carries the check
# instead: the newest pending id beside the statement's rows, from one snapshot, so rows
# read with no pending id include every write committed before them.

_FOLD_CHECK = "analytics_fold_check"
Fold = Callable[[int], Awaitable[None]]


def defer_fold_check(session: AsyncSession, fold: Fold) -> None:
    """Have the first statement that `execute_folded` runs in `session` check for pending
    rows too; when there are, `fold(newest id)` folds them and the statement runs again."""
    session.info[_FOLD_CHECK] = fold


# Each statement with the check, by statement (those are built once per shape on
# PostgreSQL; bounded for SQLite, which builds them per request).
_CHECKED: BoundedCache[Any, Any] = BoundedCache(256)
_ROW_TYPES: BoundedCache[tuple[str, ...], Any] = BoundedCache(256)


def _checked(stmt: Any) -> Any:
    wrapped = _CHECKED.get(stmt)
    if wrapped is None:
        body = stmt.subquery("checked_body")
        pending = select(func.max(_P.c.id).label("newest_pending")).subquery("pending")
        # A left join: one row (the body's columns NULL) even when the body has none.
        joined = pending.outerjoin(body, true())
        wrapped = _CHECKED.put(stmt, select(pending.c.newest_pending, *body.c).select_from(joined))
    return wrapped


def _row_type(keys: tuple[str, ...]) -> Any:
    found = _ROW_TYPES.get(keys)
    if found is None:
        found = _ROW_TYPES.put(keys, namedtuple("Row", keys, rename=True))
    return found


async def execute_folded(
    session: AsyncSession, stmt: Any, params: dict[str, Any] | None = None
) -> Sequence[Any]:
    """The rows of `stmt` (a SELECT whose first column is never NULL), read after a fold
    of every write committed before it when `defer_fold_check` asked for one (the first
    statement of the session only; the others run as they are)."""
    conn = await session.connection()
    fold: Fold | None = session.info.pop(_FOLD_CHECK, None)
    if fold is None:
        return (await conn.execute(stmt, params)).all()
    result = await conn.execute(_checked(stmt), params)
    keys = tuple(result.keys())[1:]
    rows = result.all()
    if rows[0][0] is None:
        row = _row_type(keys)
        return [row(*r[1:]) for r in rows if r[1] is not None]
    await fold(int(rows[0][0]))
    # SQLite's read transaction keeps its first snapshot: end it to see the fold.
    await session.rollback()
    conn = await session.connection()
    return (await conn.execute(stmt, params)).all()
