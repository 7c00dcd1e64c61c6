"""A conversation's messages: posting (a `user` message may queue a task) and listing."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard_api.auth import Principal
from dashboard_api.db.dialect import dialect_of
from dashboard_api.db.engine import emit
from dashboard_api.db.models import Conversation, ConversationMessage
from dashboard_api.db.paging import Ordering, PageRequest, PageResult, paginate
from dashboard_api.errors import Forbidden
from dashboard_api.ids import new_id
from dashboard_api.schemas.conversations import MessageCreate, MessagePublic, message_public
from dashboard_api.schemas.tasks import TaskCreate
from dashboard_api.services import tasks as task_service
from dashboard_api.services.conversations.access import channel, get_visible
from dashboard_api.services.pricing import PriceTable

MESSAGE_ORDER = Ordering(
    "messages",
    (ConversationMessage.created_at, ConversationMessage.message_id),
    descending=False,
)


async def list_messages(
    session: AsyncSession, *, conversation_id: str, principal: Principal, page: PageRequest
) -> PageResult[MessagePublic]:
    """A conversation's messages, oldest first."""
    await get_visible(session, conversation_id, principal)
    where = ConversationMessage.conversation_id == conversation_id
    return await paginate(
        session,
        select(ConversationMessage).where(where),
        MESSAGE_ORDER,
        page,
        convert=lambda row: message_public(row[0]),
        count_stmt=select(func.count()).select_from(ConversationMessage).where(where),
    )


def _role_for(principal: Principal, requested: str | None) -> str:
    """The message's role; 403 for a role the caller's token may not speak in."""
    if principal.role == "user":
        role = requested or "user"
        if role != "user":
            raise Forbidden("A user may post only `user` messages.")
        return role
    if principal.role == "agent":
        role = requested or "assistant"
        if role == "user":
            raise Forbidden("An agent may post only `assistant` and `system` messages.")
        return role
    return requested or "user"


async def insert_message(
    session: AsyncSession,
    *,
    conversation_id: str,
    role: str,
    content: str,
    task_id: str | None,
    now: datetime,
    metadata: dict[str, Any],
    reply_task_id: str | None = None,
) -> MessagePublic | None:
    """Store a message, bump the counters and announce it; None if the reply key existed."""
    message_id = new_id()
    values = {
        "message_id": message_id,
        "conversation_id": conversation_id,
        "role": role,
        "content": content,
        "task_id": task_id,
        "reply_task_id": reply_task_id,
        "created_at": now,
        "metadata": metadata,
    }
    stmt = (
        dialect_of(session)
        .insert(ConversationMessage.__table__)  # type: ignore[arg-type]
        .values(values)
        .on_conflict_do_nothing(index_elements=["conversation_id", "reply_task_id"])
        .returning(ConversationMessage.__table__.c.message_id)
    )
    inserted = (await session.execute(stmt)).scalar_one_or_none()
    if inserted is None:
        return None
    await session.execute(
        update(Conversation)
        .where(Conversation.conversation_id == conversation_id)
        .values(
            message_count=Conversation.message_count + 1,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    message = MessagePublic(
        message_id=message_id,
        conversation_id=conversation_id,
        role=role,
        content=content,
        task_id=task_id,
        created_at=now,
        metadata=metadata,
    )
    emit(
        session,
        channel(conversation_id),
        {"type": "message_created", "message": message.model_dump(mode="json")},
    )
    return message


async def post_message(
    session: AsyncSession,
    *,
    conversation_id: str,
    principal: Principal,
    body: MessageCreate,
    now: datetime,
    prices: PriceTable,
    default_agent_type: str,
) -> MessagePublic:
    """Post a message; a `user` message with `create_task` also queues a task, atomically."""
    role = _role_for(principal, body.role)
    # Lock order everywhere: task rows first, then the conversation row, which is locked
    # FOR UPDATE before any change to it (a weaker lock upgraded later can deadlock).
    conversation = await get_visible(session, conversation_id, principal, lock=True)
    task_id = new_id() if role == "user" and body.create_task else None
    message = await insert_message(
        session,
        conversation_id=conversation.conversation_id,
        role=role,
        content=body.content,
        task_id=task_id,
        now=now,
        metadata=body.metadata,
    )
    assert message is not None  # no reply key: nothing to conflict with
    if task_id is not None:
        await task_service.register_task(
            session,
            body=TaskCreate(
                task_id=task_id,
                agent_type=body.agent_type or conversation.agent_type or default_agent_type,
                input_message=body.content,
                source="dashboard",
                user_id=conversation.user_id,
                conversation_id=conversation.conversation_id,
                metadata={"message_id": message.message_id},
            ),
            now=now,
            prices=prices,
        )
    return message
