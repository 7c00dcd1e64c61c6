"""Conversations: per-user chat threads, messages, and tasks that answer back.

Who reaches what:
- a `user` reaches only the conversations they own (anything else is 404, never 403);
- an `admin` reaches every conversation;
- an `agent` (the producer role) reaches any conversation by id to read it and post
  `assistant` / `system` messages, but cannot list, change, delete or link.

Totals. `conversation_tasks` holds every task counted towards a conversation: the tasks
linked to it (`tasks.conversation_id`, set at registration or by linking) and their
descendants by `parent_task_id`, resolved to the root conversation when the child is
registered (or when its ancestor is linked). `message_count`, `task_count` and
`cost_micros` on the conversation row are kept by deltas inside the transaction of every
task write (`on_task_written`, called from `services.task_hooks`), so a list reads them
straight off the row and a late cost update is counted too.

Replies. When a linked task reaches a terminal state, the conversation gets one message
(`assistant` with the result; `system` with the error, or for a cancellation). The task
row lock serializes terminal moves, and a unique (conversation_id, reply_task_id) key
makes a second reply impossible even if two writers race.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, delete, exists, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard_api.auth import Principal
from dashboard_api.db.dialect import contains_ci, lock_for_update, lock_skip_locked, upsert
from dashboard_api.db.engine import emit
from dashboard_api.db.models import Conversation, ConversationMessage, ConversationTask, Task
from dashboard_api.db.paging import Ordering, PageRequest, PageResult, paginate
from dashboard_api.errors import Conflict, Forbidden, NotFound
from dashboard_api.ids import new_id
from dashboard_api.schemas.conversations import (
    ConversationCreate,
    ConversationPublic,
    ConversationUpdate,
    MessageCreate,
    MessagePublic,
    conversation_public,
    message_public,
)
from dashboard_api.schemas.tasks import TaskCreate, task_summary
from dashboard_api.services import tasks as task_service
from dashboard_api.services.pricing import PriceTable
from dashboard_api.services.task_hooks import TaskSnapshot, snapshot, task_written
from dashboard_api.task_statuses import TERMINAL_STATUSES

CONVERSATION_ORDER = Ordering(
    "conversations",
    (Conversation.updated_at, Conversation.conversation_id),
    descending=True,
)
MESSAGE_ORDER = Ordering(
    "messages",
    (ConversationMessage.created_at, ConversationMessage.message_id),
    descending=False,
)
# Automatic replies longer than a posted message may be are cut; the task keeps it all.
MAX_REPLY_CHARS = 100_000


def channel(conversation_id: str) -> str:
    """The realtime channel of a conversation."""
    return f"conversation:{conversation_id}"


@dataclass(frozen=True, slots=True)
class ConversationFilters:
    """The filters of `GET /api/conversations`, already validated."""

    archived: bool = False
    q: str | None = None
    user_id: str | None = None


# --- access ------------------------------------------------------------------------------


def _visibility(principal: Principal) -> list[ColumnElement[bool]]:
    # Admins see all; agents reach any conversation by id (they answer the tasks they
    # work on) but are kept from listing, changing and deleting by their role.
    if principal.role == "user":
        return [Conversation.user_id == principal.user_id]
    return []


async def _get_visible(
    session: AsyncSession, conversation_id: str, principal: Principal, *, lock: bool = False
) -> Conversation:
    stmt = select(Conversation).where(
        Conversation.conversation_id == conversation_id, *_visibility(principal)
    )
    if lock:
        stmt = lock_for_update(session, stmt)
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


def _only_people(principal: Principal) -> None:
    if principal.role == "agent":
        raise Forbidden("This needs one of the roles: admin, user.")


# --- conversations -----------------------------------------------------------------------


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
    return await _get_visible(session, conversation_id, principal)


async def list_conversations(
    session: AsyncSession,
    *,
    principal: Principal,
    filters: ConversationFilters,
    page: PageRequest,
) -> PageResult[ConversationPublic]:
    """The caller's conversations (an admin's: everyone's), newest `updated_at` first."""
    where: list[ColumnElement[bool]] = [
        *_visibility(principal),
        Conversation.archived == filters.archived,
    ]
    if filters.user_id is not None:
        where.append(Conversation.user_id == filters.user_id)
    if filters.q:
        where.append(contains_ci(session, Conversation.title, filters.q))
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
    _only_people(principal)
    conversation = await _get_visible(session, conversation_id, principal)
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
        conversation = await _get_visible(session, conversation_id, principal)
    return conversation


async def delete_conversation(
    session: AsyncSession, *, conversation_id: str, principal: Principal, now: datetime
) -> None:
    """Delete a conversation and its messages; its tasks stay, unlinked."""
    _only_people(principal)
    await _get_visible(session, conversation_id, principal)
    # Lock the counted tasks before the conversation, in the same order as a task write
    # (task, then conversation), so that a concurrent terminal update cannot deadlock.
    members = select(ConversationTask.task_id).where(
        ConversationTask.conversation_id == conversation_id
    )
    counted = or_(Task.conversation_id == conversation_id, Task.task_id.in_(members))
    first = lock_for_update(session, select(Task).where(counted).order_by(Task.task_id))
    tasks = list((await session.scalars(first.execution_options(populate_existing=True))).all())
    await _get_visible(session, conversation_id, principal, lock=True)
    # Tasks linked by writers that committed between the two locks. One still locked by a
    # writer that now waits for this conversation is skipped (waiting would deadlock);
    # that writer finds the conversation gone and unlinks its task itself (on_task_written).
    late = lock_skip_locked(
        session,
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
        _publish_task_status(session, task, conversation=False)
    await session.execute(
        delete(Conversation)
        .where(Conversation.conversation_id == conversation_id)
        .execution_options(synchronize_session=False)
    )


# --- messages ----------------------------------------------------------------------------


async def list_messages(
    session: AsyncSession, *, conversation_id: str, principal: Principal, page: PageRequest
) -> PageResult[MessagePublic]:
    """A conversation's messages, oldest first."""
    await _get_visible(session, conversation_id, principal)
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


async def _insert_message(
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
        upsert(session, ConversationMessage.__table__)  # type: ignore[arg-type]
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
    conversation = await _get_visible(session, conversation_id, principal, lock=True)
    task_id = new_id() if role == "user" and body.create_task else None
    message = await _insert_message(
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


# --- task links --------------------------------------------------------------------------


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
    _only_people(principal)
    await _get_visible(session, conversation_id, principal)
    task = await _locked_task(session, task_id)
    member = await _membership(session, task_id)
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
    _publish_task_status(session, task, conversation=False)


async def _locked_task(session: AsyncSession, task_id: str) -> Task:
    stmt = lock_for_update(session, select(Task).where(Task.task_id == task_id))
    task: Task | None = (
        await session.scalars(stmt.execution_options(populate_existing=True))
    ).first()
    if task is None:
        raise NotFound(f"No task {task_id!r}.")
    return task


def _publish_task_status(session: AsyncSession, task: Task, *, conversation: bool) -> None:
    payload = {"type": "task_status", **task_summary(task).model_dump(mode="json")}
    emit(session, f"task:{task.task_id}", payload)
    emit(session, "tasks", payload)
    if conversation and task.conversation_id is not None:
        emit(session, channel(task.conversation_id), payload)


# --- the task hook -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Member:
    conversation_id: str
    direct: bool


async def _membership(session: AsyncSession, task_id: str) -> _Member | None:
    stmt = select(ConversationTask.conversation_id, ConversationTask.direct).where(
        ConversationTask.task_id == task_id
    )
    row = (await session.execute(stmt)).first()
    return None if row is None else _Member(row.conversation_id, bool(row.direct))


async def _lock_conversation(session: AsyncSession, conversation_id: str) -> bool:
    """Lock the conversation row; False when it does not exist (or was just deleted)."""
    stmt = lock_for_update(
        session,
        select(Conversation.conversation_id).where(Conversation.conversation_id == conversation_id),
    )
    return (await session.execute(stmt)).first() is not None


async def _add_totals(
    session: AsyncSession, conversation_id: str, *, tasks: int, cost_micros: int
) -> None:
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


async def _leave(session: AsyncSession, task_id: str, member: _Member, cost_micros: int) -> None:
    await session.execute(delete(ConversationTask).where(ConversationTask.task_id == task_id))
    if await _lock_conversation(session, member.conversation_id):
        await _add_totals(session, member.conversation_id, tasks=-1, cost_micros=-cost_micros)


async def _join(
    session: AsyncSession, task_id: str, conversation_id: str, *, direct: bool, cost_micros: int
) -> None:
    session.add(ConversationTask(task_id=task_id, conversation_id=conversation_id, direct=direct))
    await session.flush()
    await _add_totals(session, conversation_id, tasks=1, cost_micros=cost_micros)


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
    await _add_totals(
        session, conversation_id, tasks=len(rows), cost_micros=sum(r.cost_micros for r in rows)
    )


async def _resolve_membership(
    session: AsyncSession, before: TaskSnapshot | None, after: TaskSnapshot
) -> tuple[_Member | None, bool]:
    """Where the task counts after this write, and whether it just started counting there."""
    # A task being created counts nowhere yet: its links are made here, or by a later
    # write of an ancestor (`_adopt_descendants`), which needs this task committed.
    member = None if before is None else await _membership(session, after.task_id)
    old_cost = before.cost_micros if before is not None else 0
    linked_now = before is None or before.conversation_id != after.conversation_id
    if not linked_now:
        return member, False
    target = after.conversation_id
    if target is None and member is None and after.parent_task_id is not None and before is None:
        parent = await _membership(session, after.parent_task_id)
        if parent is not None and await _lock_conversation(session, parent.conversation_id):
            await _join(
                session,
                after.task_id,
                parent.conversation_id,
                direct=False,
                cost_micros=after.cost_micros,
            )
            return _Member(parent.conversation_id, False), True
        return None, False
    if member is not None and member.conversation_id != target and member.direct:
        # Unlinked (or moved): stop counting it where it was.
        await _leave(session, after.task_id, member, old_cost)
        member = None
    if target is None or not await _lock_conversation(session, target):
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
        return _Member(target, True), True
    if member is not None:
        # A descendant of another conversation's task, now linked here directly.
        await _leave(session, after.task_id, member, old_cost)
    await _join(session, after.task_id, target, direct=True, cost_micros=after.cost_micros)
    await _adopt_descendants(session, after.task_id, target)
    return _Member(target, True), True


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
    member, joined = await _resolve_membership(session, before, after)
    if member is None:
        return
    if not joined and not await _lock_conversation(session, member.conversation_id):
        # Deleted by a transaction that committed while this one waited for the lock; it
        # may have had to skip this task's row (see delete_conversation): unlink it here.
        stale = await session.get(Task, after.task_id)
        if stale is not None and stale.conversation_id == member.conversation_id:
            stale.conversation_id = None
        return
    if not joined and before is not None and after.cost_micros != before.cost_micros:
        await _add_totals(
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
        await _insert_message(
            session,
            conversation_id=member.conversation_id,
            role=role,
            content=content,
            task_id=after.task_id,
            now=now,
            metadata=meta,
            reply_task_id=after.task_id,
        )


__all__: Sequence[str] = (
    "ConversationFilters",
    "can_access_conversation",
    "conversation_owner",
    "create_conversation",
    "delete_conversation",
    "get_conversation",
    "link_task",
    "list_conversations",
    "list_messages",
    "on_task_written",
    "post_message",
    "update_conversation",
)
