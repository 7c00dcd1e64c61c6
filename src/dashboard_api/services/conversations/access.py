"""Who reaches which conversation, and the realtime channel a conversation speaks on.

A `user` reaches only the conversations they own (another user's is 404, like a missing
one, so its existence does not leak); an `admin` reaches every conversation; an `agent`
reaches any conversation by id but may not list, change, delete or link.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, select
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard_api.auth import Principal
from dashboard_api.db.dialect import dialect_of
from dashboard_api.db.models import Conversation
from dashboard_api.errors import Forbidden, NotFound


def channel(conversation_id: str) -> str:
    """The realtime channel of a conversation."""
    return f"conversation:{conversation_id}"


def visibility(principal: Principal) -> list[ColumnElement[bool]]:
    """The conditions that keep a query to the conversations `principal` may see."""
    # Admins see all; agents reach any conversation by id (they answer the tasks they
    # work on) but are kept from listing, changing and deleting by their role.
    if principal.role == "user":
        return [Conversation.user_id == principal.user_id]
    return []


async def get_visible(
    session: AsyncSession, conversation_id: str, principal: Principal, *, lock: bool = False
) -> Conversation:
    """The conversation if `principal` may see it (locked FOR UPDATE on request), else 404."""
    stmt = select(Conversation).where(
        Conversation.conversation_id == conversation_id, *visibility(principal)
    )
    if lock:
        stmt = dialect_of(session).lock_for_update(stmt)
    result = await session.scalars(stmt.execution_options(populate_existing=True))
    conversation = result.first()
    if conversation is None:
        raise NotFound(f"No conversation {conversation_id!r}.")
    return conversation


async def conversation_owner(session: AsyncSession, *, conversation_id: str) -> str | None:
    """The owner's user id, or None when there is no such conversation."""
    stmt = select(Conversation.user_id).where(Conversation.conversation_id == conversation_id)
    owner: str | None = (await session.execute(stmt)).scalar_one_or_none()
    return owner


async def can_access_conversation(
    session: AsyncSession, *, conversation_id: str, principal: Principal
) -> bool:
    """Whether `principal` may read the conversation (and subscribe to its channel)."""
    owner = await conversation_owner(session, conversation_id=conversation_id)
    if owner is None:
        return False
    return principal.is_admin or owner == principal.user_id


def only_people(principal: Principal) -> None:
    """403 for an agent: changing, deleting and linking are for users and admins."""
    if principal.role == "agent":
        raise Forbidden("This needs one of the roles: admin, user.")
