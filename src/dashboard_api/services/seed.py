"""Load generated sample tasks (`services.seed_data`) in bulk, with their analytics.

PostgreSQL: binary COPY built a block of tasks at a time in array operations
(`services.seed_copy`), in a thread while the database loads the previous block, with the
secondary indexes and the foreign key put back once at the end; memory holds a few
blocks whatever the number of tasks. SQLite: batched inserts of the same rows.

Analytics: COPY bypasses the task-write hook. Into a database without tasks and without
rollups (a fresh one: the demo, a benchmark) the rollups are summed while the tasks are
generated (`analytics.streamed`, the rows a rebuild would write) and stored after the
load (`analytics.streamed_write`); otherwise they are rebuilt from every task after the
load, in the same transaction either way, so that they never disagree with the tasks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import Table, func, select
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
from dashboard_api.services.analytics.rebuild import rebuild_rollups
from dashboard_api.services.analytics.streamed import (
    REASONS,
    STATUS_CODES,
    RollupArrays,
    TaskArrays,
)
from dashboard_api.services.analytics.streamed_write import RollupSink
from dashboard_api.services.leases import REPORTED_BY_AGENT
from dashboard_api.services.pricing import PriceTable
from dashboard_api.services.seed_copy import event_rows, task_rows
from dashboard_api.services.seed_data import (
    AGENT_TYPES,
    EVENT_COLUMNS,
    MODELS,
    SOURCES,
    STATUSES,
    TASK_COLUMNS,
    TaskBlock,
    blocks,
    from_epoch_us,
)

_TASKS: Table = Task.__table__  # type: ignore[assignment]
_EVENTS: Table = TaskEvent.__table__  # type: ignore[assignment]
_COL = {name: i for i, name in enumerate(TASK_COLUMNS)}
# (tasks, task rows, event rows, rollup rows for the sink): task and event rows as COPY
# data on PostgreSQL, tuples on SQLite.
Batch = tuple[int, Any, Any, Any]
_AGENT_REASON = REASONS.index(REPORTED_BY_AGENT) if REPORTED_BY_AGENT in REASONS else -1
_FAILED = STATUSES.index("failed")


async def seed_tasks(
    session: AsyncSession,
    *,
    n: int,
    now: datetime,
    prices: PriceTable,
    days: int = 90,
    seed: int | None = None,
) -> int:
    """Insert `n` generated tasks with their status events; returns the number inserted."""
    await prepare_bulk_load(session)
    existing = await session.scalar(select(func.count()).select_from(Task)) or 0
    # A load at least as large as the table: build the indexes once at the end.
    dropped = (
        await drop_secondary_indexes(session, (_TASKS.name, _EVENTS.name)) if n >= existing else []
    )
    rollups = sink = None
    if not existing and await _no_rollups(session):
        rollups = RollupArrays(AGENT_TYPES, SOURCES, MODELS)
        sink = RollupSink(session, rollups)
        await sink.open(session)
    binary = copies_binary(session)
    batches = _batches(
        blocks(n, now=now, days=days, prices=prices, seed=seed), binary, rollups, sink
    )
    # Generate the next batch in a thread while the database loads this one.
    pending = asyncio.ensure_future(asyncio.to_thread(next, batches, None))
    done = 0
    try:
        while (chunk := await pending) is not None:
            pending = asyncio.ensure_future(asyncio.to_thread(next, batches, None))
            count, tasks, events, rollup_rows = chunk
            if binary:
                await copy_binary(
                    session, _TASKS.name, TASK_COLUMNS, [pgcopy.HEADER, tasks, pgcopy.TRAILER]
                )
                await copy_binary(
                    session, _EVENTS.name, EVENT_COLUMNS, [pgcopy.HEADER, events, pgcopy.TRAILER]
                )
            else:
                await bulk_insert(session, _TASKS, TASK_COLUMNS, tasks)
                await bulk_insert(session, _EVENTS, EVENT_COLUMNS, events)
            if sink is not None:
                await sink.put(session, rollup_rows)
            done += count
        await rebuild_indexes(session, dropped)
        if sink is not None:
            await sink.write(session)
        else:
            await rebuild_rollups(session, bulk=True)
    finally:
        if not pending.done():
            await asyncio.gather(pending, return_exceptions=True)
        if sink is not None:
            sink.close()
    return done


async def _no_rollups(session: AsyncSession) -> bool:
    for model in (AnalyticsRollup, AnalyticsHistogram, AnalyticsPending):
        if await session.scalar(select(1).select_from(model).limit(1)) is not None:
            return False
    return True


def _batches(
    generated: Iterator[TaskBlock],
    binary: bool,
    rollups: RollupArrays | None,
    sink: RollupSink | None,
) -> Iterator[Batch]:
    """Each block encoded, with the rollup rows of the blocks of time it closed; last, the
    rows of every block still open."""
    tasks: Any
    events: Any
    for block in generated:
        if binary:
            tasks, events = task_rows(block), event_rows(block)
        else:
            tasks, events = _plain_rows(block)
        closed = None
        if rollups is not None and sink is not None:
            closed = sink.encode(rollups.add(_figures(block)))
        yield block.n, tasks, events, closed
    if rollups is not None and sink is not None:
        empty: list[Any] = []
        yield (
            0,
            (b"" if binary else empty),
            (b"" if binary else empty),
            sink.encode(rollups.finish()),
        )


def _figures(block: TaskBlock) -> TaskArrays:
    failed = block.status == _FAILED
    return TaskArrays(
        created_s=block.created // 1_000_000,
        agent=block.agent,
        source=block.source,
        model=block.model,
        reason=np.where(failed, _AGENT_REASON, -1),
        status=STATUS_CODES[block.status],
        figures=np.column_stack((block.cost, block.tokens)),
        duration_us=block.duration,
        timed=block.timed,
        first_output_us=block.first_output - block.started,
        has_first=block.has_started,
    )


_INSTANTS = frozenset(i for i, c in enumerate(TASK_COLUMNS) if c.endswith("_at"))
_METADATA = _COL["metadata"]


def _plain_rows(block: TaskBlock) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Rows in storage form for `bulk_insert` (SQLite): datetimes, metadata a dict."""
    tasks: list[tuple[Any, ...]] = []
    events: list[tuple[Any, ...]] = []
    for row, evs in block.rows():
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
