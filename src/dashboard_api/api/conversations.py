"""`/api/conversations`: chat threads of one user, their messages and linked tasks."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from dashboard_api.api.deps import AnyRole, CtxDep, PageDep, UserRole
from dashboard_api.context import AppContext
from dashboard_api.ids import TASK_ID_PATTERN
from dashboard_api.schemas.common import Page, problem_responses
from dashboard_api.schemas.conversations import (
    ConversationCreate,
    ConversationPublic,
    ConversationUpdate,
    MessageCreate,
    MessagePublic,
    TaskLink,
    conversation_public,
)
from dashboard_api.services import conversations as service

router = APIRouter(
    prefix="/api/conversations",
    tags=["conversations"],
    responses=problem_responses(401, 403, 422),
)
ConversationIdPath = Annotated[str, Path(pattern=TASK_ID_PATTERN)]  # same id alphabet
# PostgreSQL text cannot hold NUL, so a filter containing one is refused (on both backends).
NO_NUL = r"^[^\x00]*$"

_ACCESS = (
    " A `user` reaches only their own conversations (another user's is 404, never 403);"
    " an `admin` reaches all."
)


@router.post("", status_code=201, response_model=ConversationPublic)
async def create_conversation(
    ctx: CtxDep, principal: UserRole, body: ConversationCreate
) -> ConversationPublic:
    """Start a conversation owned by the caller."""
    async with ctx.db.write() as session:
        conversation = await service.create_conversation(
            session, principal=principal, body=body, now=ctx.clock.now()
        )
        return conversation_public(conversation)


@router.get("", response_model=Page[ConversationPublic], description=_ACCESS)
async def list_conversations(
    ctx: CtxDep,
    principal: UserRole,
    page: PageDep,
    q: Annotated[
        str | None,
        Query(
            max_length=500, pattern=NO_NUL, description="Case-insensitive substring of the title"
        ),
    ] = None,
    archived: Annotated[bool, Query(description="Archived conversations instead")] = False,
    user_id: Annotated[
        str | None,
        Query(
            max_length=255,
            pattern=NO_NUL,
            description="Owner (admins; for a user it only narrows)",
        ),
    ] = None,
) -> Page[ConversationPublic]:
    """The caller's conversations, newest `updated_at` first (ties by id)."""
    filters = service.ConversationFilters(archived=archived, q=q, user_id=user_id)
    async with ctx.db.read() as session:
        result = await service.list_conversations(
            session, principal=principal, filters=filters, page=page
        )
    return Page[ConversationPublic].of(result)


@router.get(
    "/{conversation_id}",
    response_model=ConversationPublic,
    responses=problem_responses(404),
    description=_ACCESS + " An `agent` may read any conversation by id.",
)
async def get_conversation(
    ctx: CtxDep, principal: AnyRole, conversation_id: ConversationIdPath
) -> ConversationPublic:
    """One conversation."""
    async with ctx.db.read() as session:
        conversation = await service.get_conversation(
            session, conversation_id=conversation_id, principal=principal
        )
        return conversation_public(conversation)


@router.patch(
    "/{conversation_id}",
    response_model=ConversationPublic,
    responses=problem_responses(404),
    description=_ACCESS,
)
async def update_conversation(
    ctx: CtxDep, principal: UserRole, conversation_id: ConversationIdPath, body: ConversationUpdate
) -> ConversationPublic:
    """Rename, archive or unarchive a conversation."""
    async with ctx.db.write() as session:
        conversation = await service.update_conversation(
            session, conversation_id=conversation_id, principal=principal, body=body
        )
        return conversation_public(conversation)


@router.delete(
    "/{conversation_id}",
    status_code=204,
    responses=problem_responses(404),
    description=_ACCESS + " Its messages are deleted; its tasks stay, with `conversation_id` null.",
)
async def delete_conversation(
    ctx: CtxDep, principal: UserRole, conversation_id: ConversationIdPath
) -> Response:
    """Delete a conversation and its messages; its tasks stay, unlinked."""
    async with ctx.db.write() as session:
        await service.delete_conversation(
            session, conversation_id=conversation_id, principal=principal, now=ctx.clock.now()
        )
    return Response(status_code=204)


@router.get(
    "/{conversation_id}/messages",
    response_model=Page[MessagePublic],
    responses=problem_responses(404),
    description=_ACCESS + " An `agent` may read any conversation by id.",
)
async def list_messages(
    ctx: CtxDep, principal: AnyRole, conversation_id: ConversationIdPath, page: PageDep
) -> Page[MessagePublic]:
    """A conversation's messages, oldest first."""
    async with ctx.db.read() as session:
        result = await service.list_messages(
            session, conversation_id=conversation_id, principal=principal, page=page
        )
    return Page[MessagePublic].of(result)


@router.post(
    "/{conversation_id}/messages",
    status_code=201,
    response_model=MessagePublic,
    responses=problem_responses(404),
    description=(
        _ACCESS + " Roles: a `user` token posts only `user` messages (`assistant` or `system`"
        " is 403); an `agent` token posts `assistant` (the default for it) or `system`"
        " messages to any conversation by id (`user` is 403); an `admin` posts any role."
        " A `user` message with `create_task` (default true) also queues a task (source"
        " `dashboard`) in the same transaction and answers with its `task_id`; when that"
        " task ends, the conversation gets one `assistant` message with its result, or a"
        " `system` message with its error or cancellation."
    ),
)
async def post_message(
    ctx: CtxDep, principal: AnyRole, conversation_id: ConversationIdPath, body: MessageCreate
) -> MessagePublic:
    """Post a message; a user message normally queues a task for an agent."""
    async with ctx.db.write() as session:
        return await service.post_message(
            session,
            conversation_id=conversation_id,
            principal=principal,
            body=body,
            now=ctx.clock.now(),
            prices=ctx.prices,
            default_agent_type=ctx.settings.default_agent_type,
        )


@router.post(
    "/{conversation_id}/tasks",
    status_code=204,
    responses=problem_responses(404, 409),
    description=(
        _ACCESS + " Sets the task's `conversation_id`; the task and its descendant tasks then"
        " count towards `task_count` and `total_cost_usd`, and the conversation gets a reply"
        " when the task ends (at once, if it already has). Linking again is a no-op; a task"
        " that already counts towards another conversation is 409; an unknown task is 404."
    ),
)
async def link_task(
    ctx: CtxDep, principal: UserRole, conversation_id: ConversationIdPath, body: TaskLink
) -> Response:
    """Link an existing task to the conversation."""
    async with ctx.db.write() as session:
        await service.link_task(
            session,
            conversation_id=conversation_id,
            principal=principal,
            task_id=body.task_id,
            now=ctx.clock.now(),
        )
    return Response(status_code=204)


async def lookup_conversation_owner(ctx: AppContext, conversation_id: str) -> str | None:
    """The owner of a conversation, or None: `create_app` hands it to the realtime layer,
    which admits only the owner or an admin to `conversation:{id}`."""
    async with ctx.db.read() as session:
        return await service.conversation_owner(session, conversation_id=conversation_id)
