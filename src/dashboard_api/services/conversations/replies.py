"""The conversations' task-write hook: totals, `conversation:{id}` events and replies.

Run inside the transaction of every task write (assembled by `create_app`, see
`services.task_hooks`). When a task linked to a conversation reaches a terminal state,
the conversation gets exactly one message: the task row lock serializes terminal moves,
and the unique (conversation_id, reply_task_id) key refuses a second one.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from dashboard_api.db.engine import emit
from dashboard_api.db.models import Task
from dashboard_api.schemas.tasks import task_summary
from dashboard_api.services.conversations.access import channel
from dashboard_api.services.conversations.membership import (
    add_totals,
    lock_conversation,
    resolve_membership,
)
from dashboard_api.services.conversations.messages import insert_message
from dashboard_api.services.task_hooks import TaskSnapshot
from dashboard_api.task_statuses import TERMINAL_STATUSES

# Automatic replies longer than a posted message may be are cut; the task keeps it all.
MAX_REPLY_CHARS = 100_000


def _reply_for(after: TaskSnapshot) -> tuple[str, str]:
    """The (role, content) of the message answering a finished task."""
    if after.status == "completed":
        return "assistant", after.result or "The task completed without a result."
    if after.status == "failed":
        return "system", after.error or "The task failed."
    return "system", after.error or "The task was cancelled."


async def on_task_written(
    session: AsyncSession, before: TaskSnapshot | None, after: TaskSnapshot
) -> None:
    """Keep conversation totals, replies and `conversation:{id}` events in step with a task."""
    member, joined = await resolve_membership(session, before, after)
    if member is None:
        return
    if not joined and not await lock_conversation(session, member.conversation_id):
        # Deleted by a transaction that committed while this one waited for the lock; it
        # may have had to skip this task's row (see delete_conversation): unlink it here.
        stale = await session.get(Task, after.task_id)
        if stale is not None and stale.conversation_id == member.conversation_id:
            stale.conversation_id = None
        return
    if not joined and before is not None and after.cost_micros != before.cost_micros:
        await add_totals(
            session,
            member.conversation_id,
            tasks=0,
            cost_micros=after.cost_micros - before.cost_micros,
        )
    ended_now = after.status in TERMINAL_STATUSES and (
        joined or before is None or before.status not in TERMINAL_STATUSES
    )
    task = await session.get(Task, after.task_id)
    # Output appends (output_seq moved) publish no task_status; every other write does.
    # The status goes first, so that subscribers hear the end before the reply.
    if task is not None and (before is None or before.output_seq == after.output_seq):
        payload = {"type": "task_status", **task_summary(task).model_dump(mode="json")}
        emit(session, channel(member.conversation_id), payload)
    if member.direct and ended_now:
        role, content = _reply_for(after)
        meta: dict[str, Any] = {"kind": "task_reply", "task_status": after.status}
        if len(content) > MAX_REPLY_CHARS:
            content = content[:MAX_REPLY_CHARS]
            meta["truncated"] = True
        now = task.updated_at if task is not None else after.completed_at
        assert now is not None
        await insert_message(
            session,
            conversation_id=member.conversation_id,
            role=role,
            content=content,
            task_id=after.task_id,
            now=now,
            metadata=meta,
            reply_task_id=after.task_id,
        )
