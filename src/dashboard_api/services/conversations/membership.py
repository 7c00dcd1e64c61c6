"""Which conversation a task counts towards, and the conversation's task totals.

A task counts towards the conversation it is linked to (`direct`), or towards the one
its nearest counted ancestor belongs to. `conversation_tasks` holds one row per counted
task; `task_count` and `cost_micros` on the conversation row move by deltas with it.
Called only from the task-write hook (`replies.on_task_written`) and linking.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, exists, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard_api.db.dialect import dialect_of
from dashboard_api.db.models import Conversation, ConversationTask, Task
from dashboard_api.services.task_hooks import TaskSnapshot


@dataclass(frozen=True, slots=True)
class Member:
    """Where a task counts: the conversation, and whether it is linked there itself."""

    conversation_id: str
    direct: bool


async def membership(session: AsyncSession, task_id: str) -> Member | None:
    """The conversation the task counts towards, or None."""
    stmt = select(ConversationTask.conversation_id, ConversationTask.direct).where(
        ConversationTask.task_id == task_id
    )
    row = (await session.execute(stmt)).first()
    return None if row is None else Member(row.conversation_id, bool(row.direct))


async def lock_conversation(session: AsyncSession, conversation_id: str) -> bool:
    """Lock the conversation row; False when it does not exist (or was just deleted)."""
    stmt = dialect_of(session).lock_for_update(
        select(Conversation.conversation_id).where(Conversation.conversation_id == conversation_id),
    )
    return (await session.execute(stmt)).first() is not None


async def add_totals(
    session: AsyncSession, conversation_id: str, *, tasks: int, cost_micros: int
) -> None:
    """Move the conversation's task count and cost by these deltas."""
    if not tasks and not cost_micros:
        return
    await session.execute(
        update(Conversation)
        .where(Conversation.conversation_id == conversation_id)
        .values(
            task_count=Conversation.task_count + tasks,
            cost_micros=Conversation.cost_micros + cost_micros,
        )
        .execution_options(synchronize_session=False)
    )


async def _leave(session: AsyncSession, task_id: str, member: Member, cost_micros: int) -> None:
    await session.execute(delete(ConversationTask).where(ConversationTask.task_id == task_id))
    if await lock_conversation(session, member.conversation_id):
        await add_totals(session, member.conversation_id, tasks=-1, cost_micros=-cost_micros)


async def _join(
    session: AsyncSession, task_id: str, conversation_id: str, *, direct: bool, cost_micros: int
) -> None:
    session.add(ConversationTask(task_id=task_id, conversation_id=conversation_id, direct=direct))
    await session.flush()
    await add_totals(session, conversation_id, tasks=1, cost_micros=cost_micros)


async def _adopt_descendants(session: AsyncSession, task_id: str, conversation_id: str) -> None:
    """Count the already-registered, not yet counted descendants of a newly linked task."""
    tree = select(Task.task_id).where(Task.parent_task_id == task_id).cte(recursive=True)
    tree = tree.union(select(Task.task_id).where(Task.parent_task_id == tree.c.task_id))
    stmt = (
        select(Task.task_id, Task.cost_micros)
        .where(Task.task_id.in_(select(tree.c.task_id)))
        # NOT EXISTS probes the primary key per row (NOT IN would hash the whole table).
        .where(~exists().where(ConversationTask.task_id == Task.task_id))
    )
    rows = (await session.execute(stmt)).all()
    if not rows:
        return
    for row in rows:
        session.add(
            ConversationTask(task_id=row.task_id, conversation_id=conversation_id, direct=False)
        )
    await session.flush()
    await add_totals(
        session, conversation_id, tasks=len(rows), cost_micros=sum(r.cost_micros for r in rows)
    )


async def resolve_membership(
    session: AsyncSession, before: TaskSnapshot | None, after: TaskSnapshot
) -> tuple[Member | None, bool]:
    """Where the task counts after this write, and whether it just started counting there."""
    # A task being created counts nowhere yet: its links are made here, or by a later
    # write of an ancestor (`_adopt_descendants`), which needs this task committed.
    member = None if before is None else await membership(session, after.task_id)
    old_cost = before.cost_micros if before is not None else 0
    linked_now = before is None or before.conversation_id != after.conversation_id
    if not linked_now:
        return member, False
    target = after.conversation_id
    if target is None and member is None and after.parent_task_id is not None and before is None:
        parent = await membership(session, after.parent_task_id)
        if parent is not None and await lock_conversation(session, parent.conversation_id):
            await _join(
                session,
                after.task_id,
                parent.conversation_id,
                direct=False,
                cost_micros=after.cost_micros,
            )
            return Member(parent.conversation_id, False), True
        return None, False
    if member is not None and member.conversation_id != target and member.direct:
        # Unlinked (or moved): stop counting it where it was.
        await _leave(session, after.task_id, member, old_cost)
        member = None
    if target is None or not await lock_conversation(session, target):
        if member is not None and not member.direct:
            return member, False
        return None, False
    if member is not None and member.conversation_id == target:
        if not member.direct:
            await session.execute(
                update(ConversationTask)
                .where(ConversationTask.task_id == after.task_id)
                .values(direct=True)
            )
        # Same conversation; the cost delta (if any) is applied by the caller.
        return Member(target, True), True
    if member is not None:
        # A descendant of another conversation's task, now linked here directly.
        await _leave(session, after.task_id, member, old_cost)
    await _join(session, after.task_id, target, direct=True, cost_micros=after.cost_micros)
    await _adopt_descendants(session, after.task_id, target)
    return Member(target, True), True
