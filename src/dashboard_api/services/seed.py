"""Load generated sample tasks (`services.seed_data`) in bulk, with their analytics.

PostgreSQL: binary COPY built here (`db.pgcopy`), a batch at a time, generated in a thread
while the database loads the previous batch, with the secondary indexes and the foreign
key put back once at the end; memory holds a few batches whatever the number of tasks.
SQLite: batched inserts of the same rows.

Analytics: COPY bypasses the task-write hook. Into a database without tasks and without
rollups (a fresh one: the demo, a benchmark) the rollups are summed while the tasks are
generated (`analytics.streamed`, the rows a rebuild would write); otherwise they are
rebuilt from every task after the load, in the same transaction either way, so that they
never disagree with the tasks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, Integer, Table, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard_api.db import pgcopy
from dashboard_api.db.bulk import (
    bulk_insert,
    copies_binary,
    copy_binary,
    drop_secondary_indexes,
    prepare_bulk_load,
    rebuild_indexes,
)
from dashboard_api.db.models import Task, TaskEvent
from dashboard_api.db.models.analytics import (
    AnalyticsHistogram,
    AnalyticsPending,
    AnalyticsRollup,
)
from dashboard_api.services.analytics import streamed
from dashboard_api.services.analytics.rebuild import rebuild_rollups
from dashboard_api.services.pricing import PriceTable
from dashboard_api.services.seed_data import (
    EVENT_COLUMNS,
    TASK_COLUMNS,
    from_epoch_us,
    generate,
)

_TASKS: Table = Task.__table__  # type: ignore[assignment]
_EVENTS: Table = TaskEvent.__table__  # type: ignore[assignment]
_COL = {name: i for i, name in enumerate(TASK_COLUMNS)}
Generated = Iterator[tuple[tuple[Any, ...], list[tuple[str, str, int]]]]
# (tasks, task rows, event rows, rollup rows, histogram rows) of one batch; the task and
# event rows as COPY data on PostgreSQL.
Batch = tuple[int, Any, Any, list[tuple[Any, ...]], list[tuple[Any, ...]]]


async def seed_tasks(
    session: AsyncSession,
    *,
    n: int,
    now: datetime,
    prices: PriceTable,
    days: int = 90,
    batch: int = 20_000,
    seed: int | None = None,
) -> int:
    """Insert `n` generated tasks with their status events; returns the number inserted."""
    await prepare_bulk_load(session)
    existing = await session.scalar(select(func.count()).select_from(Task)) or 0
    # A load at least as large as the table: build the indexes once at the end.
    dropped = (
        await drop_secondary_indexes(session, (_TASKS.name, _EVENTS.name)) if n >= existing else []
    )
    stream = streamed.RollupStream() if not existing and await _no_rollups(session) else None
    if stream is not None:
        await streamed.open_stages(session)
    rows = generate(n, now=now, days=days, prices=prices, seed=seed)
    encode = _copy_data() if copies_binary(session) else _plain_rows
    batches = _batches(rows, batch, encode, stream)
    # Generate the next batch in a thread while the database loads this one.
    pending = asyncio.ensure_future(asyncio.to_thread(next, batches, None))
    done = 0
    try:
        while (chunk := await pending) is not None:
            pending = asyncio.ensure_future(asyncio.to_thread(next, batches, None))
            count, tasks, events, rollup_rows, hist_rows = chunk
            if isinstance(tasks, bytes) and isinstance(events, bytes):
                await copy_binary(session, _TASKS.name, TASK_COLUMNS, tasks)
                await copy_binary(session, _EVENTS.name, EVENT_COLUMNS, events)
            else:
                await bulk_insert(session, _TASKS, TASK_COLUMNS, tasks)
                await bulk_insert(session, _EVENTS, EVENT_COLUMNS, events)
            await streamed.stage_rows(session, rollup_rows, hist_rows)
            done += count
    finally:
        if not pending.done():
            await asyncio.gather(pending, return_exceptions=True)
    await rebuild_indexes(session, dropped)
    if stream is not None:
        await streamed.write_streamed(session)
    else:
        await rebuild_rollups(session, bulk=True)
    return done


async def _no_rollups(session: AsyncSession) -> bool:
    for model in (AnalyticsRollup, AnalyticsHistogram, AnalyticsPending):
        if await session.scalar(select(1).select_from(model).limit(1)) is not None:
            return False
    return True


def _batches(
    rows: Generated,
    size: int,
    encode: Callable[[list[Any]], tuple[Any, Any]],
    stream: streamed.RollupStream | None,
) -> Iterator[Batch]:
    """Batches of `size` tasks, encoded, with the rollup rows of the blocks they closed
    (the last batch: of every block)."""
    part: list[Any] = []
    for item in rows:
        part.append(item)
        if len(part) >= size:
            yield _batch(part, encode, stream, last=False)
            part = []
    yield _batch(part, encode, stream, last=True)


_CREATED, _STATUS, _STARTED = _COL["created_at"], _COL["status"], _COL["started_at"]
_AGENT, _SOURCE, _MODEL = _COL["agent_type"], _COL["source"], _COL["model"]
_REASON = _COL["failure_reason"]
_COST, _DURATION, _FIRST = _COL["cost_micros"], _COL["duration_us"], _COL["first_output_at"]
_TOKENS = slice(_COL["input_tokens"], _COL["cache_write_tokens"] + 1)


def _batch(
    part: list[Any],
    encode: Callable[[list[Any]], tuple[Any, Any]],
    stream: streamed.RollupStream | None,
    *,
    last: bool,
) -> Batch:
    rollup_rows: list[tuple[Any, ...]] = []
    hist_rows: list[tuple[Any, ...]] = []
    if stream is not None:
        for row, _ in part:
            started, first = row[_STARTED], row[_FIRST]
            stream.add(
                row[_CREATED] // 1_000_000,
                (row[_AGENT], row[_SOURCE], row[_MODEL] or ""),
                row[_REASON],
                row[_STATUS],
                (row[_COST], *row[_TOKENS]),
                row[_DURATION],
                None if first is None or started is None else max(0, first - started),
            )
        rollup_rows, hist_rows = stream.finish() if last else stream.take()
    tasks, events = encode(part)
    return len(part), tasks, events, rollup_rows, hist_rows


_INSTANTS = frozenset(i for i, c in enumerate(TASK_COLUMNS) if c.endswith("_at"))
_METADATA = _COL["metadata"]


def _plain_rows(part: list[Any]) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Rows in storage form for `bulk_insert` (SQLite): datetimes, metadata a dict."""
    tasks: list[tuple[Any, ...]] = []
    events: list[tuple[Any, ...]] = []
    for row, evs in part:
        tasks.append(
            tuple(
                {}
                if i == _METADATA
                else from_epoch_us(v)
                if i in _INSTANTS and v is not None
                else v
                for i, v in enumerate(row)
            )
        )
        events.extend((task_id, "status", s, from_epoch_us(at)) for task_id, s, at in evs)
    return tasks, events


def _copy_data() -> Callable[[list[Any]], tuple[bytes, bytes]]:
    """A function of a batch that gives its binary COPY data for the tasks and the events."""
    cached = pgcopy.TextCache()
    jsonb = pgcopy.TextCache(pgcopy.jsonb)
    encoders: list[pgcopy.Encoder] = []
    for name in TASK_COLUMNS:
        kind = _TASKS.c[name].type
        if name in ("task_id", "input_message"):  # unique: not worth caching
            encoders.append(pgcopy.text)
        elif name.endswith("_at"):
            encoders.append(pgcopy.timestamp_us)
        elif name == "metadata":
            encoders.append(jsonb)
        elif isinstance(kind, Boolean):
            encoders.append(pgcopy.boolean)
        elif isinstance(kind, BigInteger):
            encoders.append(pgcopy.int8)
        elif isinstance(kind, Integer):
            encoders.append(pgcopy.int4)
        else:
            encoders.append(cached)
    task_prefix = pgcopy.row_prefix(len(TASK_COLUMNS))
    # (task_id, type, status, at): the type is always "status".
    event_prefix = pgcopy.row_prefix(len(EVENT_COLUMNS))
    event_type = cached("status")
    text, timestamp_us = pgcopy.text, pgcopy.timestamp_us

    def encode(part: list[Any]) -> tuple[bytes, bytes]:
        tasks = [pgcopy.HEADER]
        events = [pgcopy.HEADER]
        for row, evs in part:
            tasks.append(task_prefix)
            tasks += [enc(v) for enc, v in zip(encoders, row, strict=True)]
            for task_id, status, at in evs:
                events += (
                    event_prefix,
                    text(task_id),
                    event_type,
                    cached(status),
                    timestamp_us(at),
                )
        tasks.append(pgcopy.TRAILER)
        events.append(pgcopy.TRAILER)
        return b"".join(tasks), b"".join(events)

    return encode
