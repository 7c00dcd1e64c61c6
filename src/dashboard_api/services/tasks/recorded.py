"""Tasks recorded after they ended (from an OpenTelemetry trace, say), in a few statements
whatever their number, through the same state machine, price table and hooks as the
live path (`lifecycle`, `output`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from types import SimpleNamespace
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard_api.db.dialect import dialect_of
from dashboard_api.schemas.tasks import TaskCreate, TaskUpdate
from dashboard_api.services.leases import default_lease_seconds
from dashboard_api.services.pricing import PriceTable
from dashboard_api.services.task_hooks import TaskWrite, snapshot, tasks_written
from dashboard_api.services.tasks.lifecycle import (
    apply_update,
    new_task,
    publish_status,
    recompute_cost,
    renew_lease,
)
from dashboard_api.services.tasks.output import emit_output
from dashboard_api.services.tasks.reads import CHUNKS_TABLE, EVENTS_TABLE, TASK_ROW, TASKS_TABLE


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
    code; the hooks see it once, new and final, all the tasks as one batch
    (`tasks_written`), and it is announced once: its `task_output` events, then one
    `task_status` with its final state. A task whose id exists is left alone. Returns the
    tasks recorded (plain objects).

    The bodies are taken as they are (the caller built them; no validation here)."""
    if not records:
        return []
    lease = default_lease_seconds(session)
    planned = []
    for record in records:
        task = new_task(record.body, record.started_at, lease_seconds=lease)
        recompute_cost(task, prices)
        stored, size, truncated = _fit_output(record.chunks, cap_bytes)
        if stored:
            task.output_seq, task.output_bytes = len(stored), size
            task.first_output_at = record.completed_at
        task.output_truncated = truncated
        apply_update(
            task, task.task_id, record.final, record.completed_at, prices, lease_seconds=lease
        )
        planned.append((task, record, stored))
    dialect = dialect_of(session)
    inserted = {
        key
        for (key,) in await dialect.insert_missing_returning(
            session, TASKS_TABLE, ("task_id",), [_task_row(task) for task, _, _ in planned], {}
        )
    }
    done = [p for p in planned if p[0].task_id in inserted]
    if not done:
        return []
    events: list[tuple[Any, ...]] = []
    chunks: list[tuple[Any, ...]] = []
    for task, record, stored in done:
        task_id = task.task_id
        events.append((task_id, "status", "running", task.started_at))
        events.append((task_id, "status", task.status, task.completed_at))
        at = record.completed_at
        chunks += [(task_id, i, st, c, at) for i, (st, c) in enumerate(stored, start=1)]
    await dialect.insert_rows(session, EVENTS_TABLE, _EVENT_COLUMNS, events)
    await dialect.insert_rows(session, CHUNKS_TABLE, _CHUNK_COLUMNS, chunks)
    await tasks_written(session, [(None, snapshot(task)) for task, _, _ in done])
    for task, record, stored in done:
        if stored:
            emit_output(session, task.task_id, 1, stored, record.completed_at)
        publish_status(session, task)
    return [task for task, _, _ in done]


async def update_recorded_tasks(
    session: AsyncSession,
    *,
    updates: Sequence[tuple[str, TaskUpdate]],
    now: datetime,
    prices: PriceTable,
) -> list[str]:
    """`update_task` of several distinct tasks (late figures of recorded tasks), in
    statements that do not grow with their number: the rows read and locked in id order
    at once, the same rules applied to each, the changed ones written with one statement
    (their moves' status events with another), the hooks run over the batch and each
    change announced. A task that is gone is skipped. Returns the ids of the tasks
    found. The bodies are taken as they are (the caller built them)."""
    if not updates:
        return []
    dialect = dialect_of(session)
    bodies = dict(updates)
    stmt = dialect.lock_for_update(
        select(*TASK_ROW).where(dialect.in_strings(_T.c.task_id, "ids")).order_by(_T.c.task_id)
    )
    rows = (await session.execute(stmt, {"ids": sorted(bodies)})).all()
    lease = default_lease_seconds(session)
    writes: list[TaskWrite] = []
    announced: list[SimpleNamespace] = []
    written: list[SimpleNamespace] = []
    moved_ones: list[SimpleNamespace] = []
    columns: set[str] = set()
    for row in rows:
        task = SimpleNamespace(**row._mapping)
        before = snapshot(task)
        changed, moved = apply_update(
            task, task.task_id, bodies[task.task_id], now, prices, lease_seconds=lease
        )
        renewed_lease = not moved and renew_lease(task, now, lease_seconds=lease)
        if not changed and not renewed_lease:
            continue
        old = row._mapping
        columns.update(name for name, value in vars(task).items() if value != old[name])
        written.append(task)
        if moved:
            moved_ones.append(task)
        if changed:  # a renewal alone is no news: no hooks, no event
            writes.append((before, snapshot(task)))
            announced.append(task)
    if written:
        names = sorted(columns)
        await dialect.update_by_keys(
            session,
            TASKS_TABLE,
            ("task_id",),
            [_COLUMN_OF.get(n, n) for n in names],
            [(t.task_id, *(getattr(t, n) for n in names)) for t in written],
        )
    await dialect.insert_rows(
        session,
        EVENTS_TABLE,
        _EVENT_COLUMNS,
        [(t.task_id, "status", t.status, now) for t in moved_ones],
    )
    await tasks_written(session, writes)
    for task in announced:
        publish_status(session, task)
    return [row.task_id for row in rows]


_T = TASKS_TABLE
_EVENT_COLUMNS = ("task_id", "type", "status", "at")
_CHUNK_COLUMNS = ("task_id", "seq", "stream", "content", "created_at")
_COLUMN_OF = {"metadata_": "metadata"}  # a task's attributes that are not its column names


def _task_row(task: SimpleNamespace) -> dict[str, Any]:
    return {_COLUMN_OF.get(k, k): v for k, v in vars(task).items()}


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
