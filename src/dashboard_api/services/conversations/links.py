"""Linking an existing task (and its descendants) to a conversation."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard_api.auth import Principal
from dashboard_api.db.dialect import dialect_of
from dashboard_api.db.engine import emit
from dashboard_api.db.models import Task
from dashboard_api.errors import Conflict, NotFound
from dashboard_api.schemas.tasks import task_summary
from dashboard_api.services.conversations.access import channel, get_visible, only_people
from dashboard_api.services.conversations.membership import membership
from dashboard_api.services.task_hooks import snapshot, task_written


async def link_task(
    session: AsyncSession,
    *,
    conversation_id: str,
    principal: Principal,
    task_id: str,
    now: datetime,
) -> None:
    """Link an existing task (and its descendants) to the conversation.

    Idempotent for a task already linked here; 409 for a task that counts towards
    another conversation. A task that has already ended is answered at once.
    """
    only_people(principal)
    await get_visible(session, conversation_id, principal)
    task = await _locked_task(session, task_id)
    member = await membership(session, task_id)
    if member is not None and member.conversation_id != conversation_id:
        raise Conflict(
            f"Task {task_id!r} already belongs to another conversation.",
            extra={"conversation_id": member.conversation_id} if principal.is_admin else None,
        )
    if task.conversation_id == conversation_id and member is not None and member.direct:
        return
    before = snapshot(task)
    task.conversation_id = conversation_id
    task.updated_at = now
    await session.flush()
    await task_written(session, before, snapshot(task))
    publish_task_status(session, task, conversation=False)


async def _locked_task(session: AsyncSession, task_id: str) -> Task:
    stmt = dialect_of(session).lock_for_update(select(Task).where(Task.task_id == task_id))
    task: Task | None = (
        await session.scalars(stmt.execution_options(populate_existing=True))
    ).first()
    if task is None:
        raise NotFound(f"No task {task_id!r}.")
    return task


def publish_task_status(session: AsyncSession, task: Task, *, conversation: bool) -> None:
    """Announce a task's new state on its channels (and its conversation's, on request)."""
    payload = {"type": "task_status", **task_summary(task).model_dump(mode="json")}
    emit(session, f"task:{task.task_id}", payload)
    emit(session, "tasks", payload)
    if conversation and task.conversation_id is not None:
        emit(session, channel(task.conversation_id), payload)
