"""Kept statements replayed on the driver connection, past SQLAlchemy's execution layer.

A kept page statement (`paging._REUSED`) is the same object with the same bound values
at every request, so the SQL text and parameters SQLAlchemy sends for it never change.
Executing it through the session still costs SQLAlchemy's work per statement (the
cache-key lookup, an execution context, the cursor adapter, a Row per row): ~0.15 ms of
CPU for a 51-row first page on PostgreSQL, more than half of what asyncpg itself spends
sending it and reading its ~60 KB. So the first execution goes through SQLAlchemy, which
compiles it and shows what it sent (`CursorResult.context`); later ones send that text
and those parameters on the session's own driver connection (asyncpg keeps it prepared),
and apply the same result processors to the values (`CursorResult`'s, per column).

What SQLAlchemy did besides stays as it was:
- the connection is the session's, checked out, reset and returned by its pool as before;
- any error of the driver sends the statement through SQLAlchemy again, whose answer
  (its error, classified by the dialect, and the pool invalidated on a disconnect) is the
  request's, as without the replay (a read: running it twice changes nothing);
- with any listener on the engine's or connection's statement events (tracing, the
  statement tests, `bench.plans`) every statement goes through SQLAlchemy, so that the
  listener sees each one.
Only backends whose dialect says so (`Dialect.replays_on_driver`) replay.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

from sqlalchemy import Select
from sqlalchemy.engine import CursorResult, Row
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.compiler import SQLCompiler

from dashboard_api.db.dialect import dialect_of

# (index, processor) of the columns whose values SQLAlchemy converts (a timestamp's
# UTC, say); the others come from the driver as they are.
Processors = tuple[tuple[int, Callable[[Any], Any]], ...]


class _Replay:
    __slots__ = ("params", "processors", "sql", "statement")

    def __init__(
        self, statement: Select[Any], sql: str, params: Sequence[Any], processors: Processors
    ) -> None:
        self.statement = statement  # held: no other object takes its id while kept
        self.sql = sql
        self.params = tuple(params)
        self.processors = processors


# By the id of the kept statement; as many as `paging` keeps statements.
_REPLAYS: dict[int, _Replay] = {}
_REPLAYS_MAX = 1024


async def kept_rows(session: AsyncSession, kept: Select[Any]) -> Sequence[Row[Any]]:
    """The rows of `kept` (a statement executed again and again unchanged, no parameters
    given): what `(await session.execute(kept)).all()` returns, or replayed rows with the
    same values (tuples: read by position, as every reader of a kept page reads them)."""
    if not dialect_of(session).replays_on_driver:
        return await _executed(session, kept)
    conn = await session.connection()
    sync = conn.sync_connection
    if sync is None or _statement_listened(sync.dispatch):
        # A listener of statement events must see this one too.
        return await _executed(session, kept)
    replay = _REPLAYS.get(id(kept))
    if replay is None or replay.statement is not kept:
        result = await session.execute(kept)
        _keep(kept, result)
        kept_now: Sequence[Row[Any]] = result.all()
        return kept_now
    driver = (await conn.get_raw_connection()).driver_connection
    try:
        records = await _fetch(driver, replay)
    except Exception:
        # SQLAlchemy's own answer to whatever went wrong (see the module's text).
        return await _executed(session, kept)
    processors = replay.processors
    if not processors:
        return cast("list[Row[Any]]", [tuple(r) for r in records])
    rows: list[tuple[Any, ...]] = []
    for record in records:
        row = list(record)
        for i, process in processors:
            row[i] = process(row[i])
        rows.append(tuple(row))
    return cast("list[Row[Any]]", rows)


async def _executed(session: AsyncSession, kept: Select[Any]) -> Sequence[Row[Any]]:
    rows: Sequence[Row[Any]] = (await session.execute(kept)).all()
    return rows


async def _fetch(driver: Any, replay: _Replay) -> Sequence[Sequence[Any]]:
    """The rows of the replayed statement, as the driver reads them (asyncpg: prepared
    once per connection, in its statement cache)."""
    rows: Sequence[Sequence[Any]] = await driver.fetch(replay.sql, *replay.params)
    return rows


def _statement_listened(dispatch: Any) -> bool:
    """Whether a listener (the engine's, joined, or the connection's) waits on the events
    of statement execution (an engine's `engine_connect`, which applies its execution
    options, is not one)."""
    return bool(
        dispatch.before_execute
        or dispatch.after_execute
        or dispatch.before_cursor_execute
        or dispatch.after_cursor_execute
    )


def _keep(kept: Select[Any], result: Any) -> None:
    """Note what SQLAlchemy sent for `kept`, when it is one plain statement whose text
    and parameters a replay can send as they are."""
    if not isinstance(result, CursorResult):
        return
    context = result.context
    compiled = context.compiled
    if not isinstance(compiled, SQLCompiler) or len(context.parameters) != 1:
        return
    params = context.parameters[0]
    if not isinstance(params, (list, tuple)):
        return  # not positional: not what asyncpg takes
    if any(b.callable is not None for b in compiled.binds.values()):
        return  # a value computed at each execution
    metadata = result._metadata
    if getattr(metadata, "_tuplefilter", None) is not None:
        return
    found = getattr(metadata, "_processors", None)
    if found is None:
        return
    processors = tuple((i, p) for i, p in enumerate(found) if p is not None)
    if len(_REPLAYS) >= _REPLAYS_MAX:
        del _REPLAYS[next(iter(_REPLAYS))]
    _REPLAYS[id(kept)] = _Replay(kept, context.statement, params, processors)
