"""Tasks recorded after they ended (from an OpenTelemetry trace, say), in a few statements
whatever their number, through the same state machine, price table and hooks as the
live path (`lifecycle`, `output`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard_api.schemas.tasks import TaskCreate, TaskUpdate
from dashboard_api.services.leases import default_lease_seconds
from dashboard_api.services.pricing import PriceTable
from dashboard_api.services.task_hooks import snapshot, tasks_written
from dashboard_api.services.tasks.lifecycle import (
    INSERT_EVENT,
    apply_update,
    insert_new_task,
    new_task,
    publish_status,
    recompute_cost,
)
from dashboard_api.services.tasks.output import emit_output
from dashboard_api.services.tasks.reads import CHUNKS_TABLE


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
    tasks recorded (plain objects)."""
    planned = []
    for record in records:
        lease = default_lease_seconds(session)
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
    if not planned:
        return []
    values = [
        {("metadata" if k == "metadata_" else k): v for k, v in vars(task).items()}
        for task, _, _ in planned
    ]
    inserted = {row.task_id for row in await session.execute(insert_new_task(session), values)}
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
    await session.execute(INSERT_EVENT, events)
    if chunks:
        await session.execute(insert(CHUNKS_TABLE), chunks)
    await tasks_written(session, [(None, snapshot(task)) for task, _, _ in done])
    for task, record, stored in done:
        if stored:
            emit_output(session, task.task_id, 1, stored, record.completed_at)
        publish_status(session, task)
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
