"""The conversations themselves: create, read, list, change and delete them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard_api.auth import Principal
from dashboard_api.db.dialect import dialect_of
from dashboard_api.db.models import Conversation, ConversationTask, Task
from dashboard_api.db.paging import Ordering, PageRequest, PageResult, paginate
from dashboard_api.ids import new_id
from dashboard_api.schemas.conversations import (
    ConversationCreate,
    ConversationPublic,
    ConversationUpdate,
    conversation_public,
)
from dashboard_api.services.conversations.access import get_visible, only_people, visibility
from dashboard_api.services.conversations.links import publish_task_status
from dashboard_api.services.task_hooks import snapshot, task_written

CONVERSATION_ORDER = Ordering(
    "conversations",
    (Conversation.updated_at, Conversation.conversation_id),
    descending=True,
)


@dataclass(frozen=True, slots=True)
class ConversationFilters:
    """The filters of `GET /api/conversations`, already validated."""

    archived: bool = False
    q: str | None = None
    user_id: str | None = None


async def create_conversation(
    session: AsyncSession, *, principal: Principal, body: ConversationCreate, now: datetime
) -> Conversation:
    """A new, empty conversation owned by the caller."""
    conversation = Conversation(
        conversation_id=new_id(),
        title=body.title,
        user_id=principal.user_id,
        agent_type=body.agent_type,
        archived=False,
        created_at=now,
        updated_at=now,
        metadata_=body.metadata,
        message_count=0,
        task_count=0,
        cost_micros=0,
    )
    session.add(conversation)
    await session.flush()
    return conversation


async def get_conversation(
    session: AsyncSession, *, conversation_id: str, principal: Principal
) -> Conversation:
    """One conversation the caller may see, or 404."""
    return await get_visible(session, conversation_id, principal)


async def list_conversations(
    session: AsyncSession,
    *,
    principal: Principal,
    filters: ConversationFilters,
    page: PageRequest,
) -> PageResult[ConversationPublic]:
    """The caller's conversations (an admin's: everyone's), newest `updated_at` first."""
    where: list[ColumnElement[bool]] = [
        *visibility(principal),
        Conversation.archived == filters.archived,
    ]
    if filters.user_id is not None:
        where.append(Conversation.user_id == filters.user_id)
    if filters.q:
        where.append(dialect_of(session).contains_ci(Conversation.title, filters.q))
    stmt: Select[Any] = select(Conversation).where(and_(*where))
    count_stmt = select(func.count()).select_from(Conversation).where(and_(*where))
    return await paginate(
        session,
        stmt,
        CONVERSATION_ORDER,
        page,
        convert=lambda row: conversation_public(row[0]),
        count_stmt=count_stmt,
    )


async def update_conversation(
    session: AsyncSession,
    *,
    conversation_id: str,
    principal: Principal,
    body: ConversationUpdate,
) -> Conversation:
    """Rename, (un)archive, change the default agent type or metadata."""
    only_people(principal)
    conversation = await get_visible(session, conversation_id, principal)
    values: dict[str, Any] = {}
    fields = body.model_fields_set
    if body.title is not None:
        values["title"] = body.title
    if body.archived is not None:
        values["archived"] = body.archived
    if "agent_type" in fields:
        values["agent_type"] = body.agent_type
    if body.metadata is not None:
        values["metadata_"] = body.metadata
    if values:
        await session.execute(
            update(Conversation)
            .where(Conversation.conversation_id == conversation.conversation_id)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        conversation = await get_visible(session, conversation_id, principal)
    return conversation


async def delete_conversation(
    session: AsyncSession, *, conversation_id: str, principal: Principal, now: datetime
) -> None:
    """Delete a conversation and its messages; its tasks stay, unlinked."""
    only_people(principal)
    await get_visible(session, conversation_id, principal)
    # Lock the counted tasks before the conversation, in the same order as a task write
    # (task, then conversation), so that a concurrent terminal update cannot deadlock.
    members = select(ConversationTask.task_id).where(
        ConversationTask.conversation_id == conversation_id
    )
    counted = or_(Task.conversation_id == conversation_id, Task.task_id.in_(members))
    first = dialect_of(session).lock_for_update(select(Task).where(counted).order_by(Task.task_id))
    tasks = list((await session.scalars(first.execution_options(populate_existing=True))).all())
    await get_visible(session, conversation_id, principal, lock=True)
    # Tasks linked by writers that committed between the two locks. One still locked by a
    # writer that now waits for this conversation is skipped (waiting would deadlock);
    # that writer finds the conversation gone and unlinks its task itself (on_task_written).
    late = dialect_of(session).lock_skip_locked(
        select(Task)
        .where(counted, Task.task_id.not_in([t.task_id for t in tasks]))
        .order_by(Task.task_id),
    )
    tasks += (await session.scalars(late.execution_options(populate_existing=True))).all()
    for task in tasks:
        if task.conversation_id != conversation_id:
            continue
        before = snapshot(task)
        task.conversation_id = None
        task.updated_at = now
        await session.flush()
        await task_written(session, before, snapshot(task))
        publish_task_status(session, task, conversation=False)
    await session.execute(
        delete(Conversation)
        .where(Conversation.conversation_id == conversation_id)
        .execution_options(synchronize_session=False)
    )
