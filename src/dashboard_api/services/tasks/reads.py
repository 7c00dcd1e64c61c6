"""Reads of one task: the task, its status history, its output chunks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import Table, bindparam, select
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard_api.db.models import Task, TaskEvent, TaskOutputChunk
from dashboard_api.errors import NotFound
from dashboard_api.schemas.tasks_json import public_row_converter

_T = Task.__table__
_E = TaskEvent.__table__
_C = TaskOutputChunk.__table__
# Every column of a task, `metadata` under its attribute name (what `task_public` reads).
TASK_ROW = (*(c for c in _T.c if c.name != "metadata"), _T.c.metadata.label("metadata_"))
# `public_doc` of a TASK_ROW row, by position.
public_doc_of_row = public_row_converter([c.name for c in TASK_ROW])
AnyRow = Row[*tuple[Any, ...]]
# The same tables, typed for Core statements (`update`, `insert`).
TASKS_TABLE = cast(Table, Task.__table__)
EVENTS_TABLE = cast(Table, TaskEvent.__table__)
CHUNKS_TABLE = cast(Table, TaskOutputChunk.__table__)


async def get_task(session: AsyncSession, task_id: str) -> Task:
    """The task, or 404."""
    task = await session.get(Task, task_id)
    if task is None:
        raise NotFound(f"No task {task_id!r}.")
    return task


# The reads of one task, built once with their values bound at each execution: a
# statement object built per request cost SQLAlchemy a walk of it for its cache key.
_TASK_BY_ID = select(*TASK_ROW).where(_T.c.task_id == bindparam("task_id"))
_EVENTS_OF_TASK = (
    select(_E.c.status, _E.c.at).where(_E.c.task_id == bindparam("task_id")).order_by(_E.c.event_id)
)
_CHUNKS_AFTER = (
    select(_C.c.seq, _C.c.stream, _C.c.content, _C.c.created_at)
    .where(_C.c.task_id == bindparam("task_id"), _C.c.seq > bindparam("after_seq"))
    .order_by(_C.c.seq)
)


async def get_task_row(session: AsyncSession, task_id: str) -> AnyRow:
    """The task as a plain row (the attributes of a `Task`), or 404."""
    row = (await session.execute(_TASK_BY_ID, {"task_id": task_id})).first()
    if row is None:
        raise NotFound(f"No task {task_id!r}.")
    return row


async def status_event_rows(session: AsyncSession, task_id: str) -> Sequence[AnyRow]:
    """A task's status history (status, at), oldest first."""
    return (await session.execute(_EVENTS_OF_TASK, {"task_id": task_id})).all()


async def chunk_rows(
    session: AsyncSession, task_id: str, *, after_seq: int = 0
) -> Sequence[AnyRow]:
    """Output chunks (seq, stream, content, created_at) with seq > after_seq, in order."""
    params = {"task_id": task_id, "after_seq": after_seq}
    return (await session.execute(_CHUNKS_AFTER, params)).all()


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
