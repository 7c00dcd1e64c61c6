"""Load generated sample tasks (`services.seed_data`) in bulk, with their analytics.

PostgreSQL: binary COPY of blocks of tasks made in array operations by a producer process
(`services.seed_worker`) while the database loads the previous block, with the secondary
indexes and the foreign key put back once at the end; memory holds a few blocks whatever
the number of tasks. SQLite: the same blocks as rows in the driver's storage form
(`services.seed_rows`) inserted by its executemany, the next block made in a thread
meanwhile, the secondary indexes dropped and built once at the end as well, with a
larger page cache for the load.

Analytics: COPY bypasses the task-write hook. Into a database without tasks and without
rollups (a fresh one: the demo, a benchmark) the rollups are summed while the tasks are
generated (`analytics.streamed`, the rows a rebuild would write) and stored after the
load (`analytics.streamed_write`); otherwise they are rebuilt from every task after the
load, in the same transaction either way, so that they never disagree with the tasks.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from sqlalchemy import Table, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard_api.db import pgcopy
from dashboard_api.db.bulk import (
    copies_binary,
    copy_binary,
    drop_secondary_indexes,
    finish_bulk_load,
    insert_driver_rows,
    prepare_bulk_load,
    rebuild_indexes,
)
from dashboard_api.db.models import Task, TaskEvent
from dashboard_api.db.models.analytics import (
    STATE_TABLE,
    AnalyticsHistogram,
    AnalyticsPending,
    AnalyticsRollup,
)
from dashboard_api.services import seed_rows
from dashboard_api.services.analytics.rebuild import rebuild_rollups
from dashboard_api.services.analytics.streamed_write import RollupSink, write_spilled
from dashboard_api.services.pricing import PriceTable
from dashboard_api.services.seed_data import (
    CHUNK,
    EVENT_COLUMNS,
    TASK_COLUMNS,
    TaskBlock,
    blocks,
)
from dashboard_api.services.seed_worker import Job, Producer, figures, new_rollups

_TASKS: Table = Task.__table__  # type: ignore[assignment]
_EVENTS: Table = TaskEvent.__table__  # type: ignore[assignment]
# (tasks, task rows, event rows, rollup rows for the sink) on SQLite.
Batch = tuple[int, list[tuple[Any, ...]], list[tuple[Any, ...]], Any]


async def seed_tasks(
    session: AsyncSession,
    *,
    n: int,
    now: datetime,
    prices: PriceTable,
    days: int = 90,
    seed: int | None = None,
    chunk: int = CHUNK,
) -> int:
    """Insert `n` generated tasks with their status events, about `chunk` at a time;
    returns the number inserted."""
    await prepare_bulk_load(session)
    try:
        return await _seed(session, n=n, now=now, prices=prices, days=days, seed=seed, chunk=chunk)
    finally:
        await finish_bulk_load(session)


async def _seed(
    session: AsyncSession,
    *,
    n: int,
    now: datetime,
    prices: PriceTable,
    days: int,
    seed: int | None,
    chunk: int,
) -> int:
    existing = await session.scalar(select(func.count()).select_from(Task)) or 0
    # A load at least as large as the table: build the indexes once at the end.
    dropped = (
        await drop_secondary_indexes(session, (_TASKS.name, _EVENTS.name)) if n >= existing else []
    )
    stream = not existing and await _no_rollups(session)
    if copies_binary(session):
        with tempfile.TemporaryDirectory(prefix="dashboard-seed-") as directory:
            producer = Producer(Job(n, now, days, prices, seed, stream, directory, chunk))
            done = await _copy_from(session, producer)
            await rebuild_indexes(session, dropped)
            if stream:
                await write_spilled(session, producer.spilled)
    else:
        sink = RollupSink(new_rollups(), binary=False) if stream else None
        generated = blocks(n, now=now, days=days, prices=prices, seed=seed, chunk=chunk)
        done = await _insert(session, generated, sink)
        await rebuild_indexes(session, dropped)
        if sink is not None:
            await sink.write(session)
    if not stream:
        await rebuild_rollups(session, bulk=True)
    # The generated tasks go back `days`, before where a prune left the table empty:
    # list totals count from the oldest task again (services/retention.py).
    await session.execute(update(STATE_TABLE).values(empty_before_s=None))
    return done


async def _copy_from(session: AsyncSession, producer: Producer) -> int:
    """COPY each block the producer makes (it makes the next one meanwhile)."""
    done = 0
    try:
        while (block := await asyncio.to_thread(producer.next)) is not None:
            count, tasks, events = block
            await copy_binary(session, _TASKS.name, TASK_COLUMNS, _data(tasks))
            await copy_binary(session, _EVENTS.name, EVENT_COLUMNS, _data(events))
            done += count
    finally:
        producer.close()
    return done


def _data(rows: bytes) -> list[bytes]:
    return [pgcopy.HEADER, rows, pgcopy.TRAILER]


async def _insert(
    session: AsyncSession, generated: Iterator[TaskBlock], sink: RollupSink | None
) -> int:
    """SQLite: insert each block's rows (the next one made in a thread meanwhile)."""
    if sink is not None:
        await sink.open(session)
    batches = _batches(generated, sink)
    pending = asyncio.ensure_future(asyncio.to_thread(next, batches, None))
    done = 0
    try:
        while (chunk := await pending) is not None:
            pending = asyncio.ensure_future(asyncio.to_thread(next, batches, None))
            count, tasks, events, rollup_rows = chunk
            await insert_driver_rows(session, _TASKS.name, TASK_COLUMNS, tasks)
            await insert_driver_rows(session, _EVENTS.name, EVENT_COLUMNS, events)
            if sink is not None:
                await sink.put(session, rollup_rows)
            done += count
    finally:
        if not pending.done():
            await asyncio.gather(pending, return_exceptions=True)
    return done


async def _no_rollups(session: AsyncSession) -> bool:
    for model in (AnalyticsRollup, AnalyticsHistogram, AnalyticsPending):
        if await session.scalar(select(1).select_from(model).limit(1)) is not None:
            return False
    return True


def _batches(generated: Iterator[TaskBlock], sink: RollupSink | None) -> Iterator[Batch]:
    """Each block's rows, with the rollup rows of the blocks of time it closed; last, the
    rows of every block still open."""
    for block in generated:
        tasks, events = seed_rows.task_rows(block), seed_rows.event_rows(block)
        closed = None if sink is None else sink.encode(sink.rollups.add(figures(block)))
        yield block.n, tasks, events, closed
    if sink is not None:
        yield 0, [], [], sink.encode(sink.rollups.finish())
