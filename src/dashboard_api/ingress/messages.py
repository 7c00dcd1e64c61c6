"""Producer messages of the Redis ingress (docs/api.md §11): their channels, and storing one.

Each message goes through the same service functions as the HTTP producer endpoints, so
its events fan out the same way. A message may carry a `message_id` (unique per task): the
id is recorded in the same transaction as the change it carries (`claim_message`), so a
message whose id is recorded is skipped, whichever replica stores it and whenever.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, Literal

import orjson
from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard_api.context import AppContext
from dashboard_api.db.dialect import dialect_of
from dashboard_api.db.models.ingress import IngressMessage
from dashboard_api.ids import TASK_ID_RE
from dashboard_api.schemas.tasks import OutputAppend, TaskUpdate
from dashboard_api.services import tasks as service

MESSAGE_ID_MAX = 200
# How long stored message ids are kept: far longer than any producer retries a message.
ID_RETENTION = timedelta(hours=24)


def ingress_patterns(prefix: str = "") -> tuple[str, str]:
    """The channel patterns producers publish to (docs/api.md §11), after `prefix`."""
    return f"{prefix}task:*:output", f"{prefix}task:*:status"


def parse_ingress_channel(channel: str, prefix: str = "") -> tuple[str, str] | None:
    """`{prefix}task:{id}:output` → (id, "output"); None for anything else."""
    head = f"{prefix}task:"
    if not channel.startswith(head):
        return None
    task_id, sep, kind = channel[len(head) :].rpartition(":")
    if not sep or kind not in ("output", "status") or TASK_ID_RE.fullmatch(task_id) is None:
        return None
    return task_id, kind


async def claim_message(
    session: AsyncSession, task_id: str, message_id: str, now: datetime
) -> bool:
    """Record a message id in the caller's transaction; False when it was recorded before.

    A concurrent transaction recording the same id makes this one wait for its outcome
    (the primary key), so of two replicas storing one message only one goes on.
    """
    table = IngressMessage.__table__
    stmt = (
        dialect_of(session)
        .insert(table)  # type: ignore[arg-type]
        .values(task_id=task_id, message_id=message_id, stored_at=now)
        .on_conflict_do_nothing(index_elements=["task_id", "message_id"])
        .returning(table.c.message_id)
    )
    return (await session.execute(stmt)).first() is not None


Outcome = Literal["stored", "duplicate", "dropped_without_id"]


def parse_body(data: Any) -> tuple[dict[str, Any], str | None]:
    """The message's JSON object without its `message_id`, and that id; raises ValueError
    (orjson's decode error is one) when either is malformed."""
    body = orjson.loads(data)
    if not isinstance(body, dict):
        raise ValueError("the message is not a JSON object")
    message_id = body.pop("message_id", None)
    if message_id is not None and (
        not isinstance(message_id, str) or not 0 < len(message_id) <= MESSAGE_ID_MAX
    ):
        raise ValueError(f"message_id must be a string of 1 to {MESSAGE_ID_MAX} characters")
    return body, message_id


async def store_message(
    ctx: AppContext, task_id: str, kind: str, data: Any, *, held: bool = False
) -> Outcome:
    """Validate and store one producer message for `task_id` (`kind`: "output" or
    "status"). Raises ValueError, pydantic's ValidationError or a ProblemError when it is
    malformed or refused. `held`: received while another replica led, so stored only when
    it carries an id that tells whether it was stored before."""
    body, message_id = parse_body(data)
    if held and message_id is None:
        return "dropped_without_id"
    now = ctx.clock.now()
    settings = ctx.settings
    write: Callable[[AsyncSession], Awaitable[Any]]
    if kind == "output":
        chunks = OutputAppend.model_validate(body).as_chunks()
        if len(chunks) > settings.max_chunks_per_request:
            raise ValueError("too many chunks in one message")

        def write(session: AsyncSession) -> Awaitable[Any]:
            return service.append_output(
                session,
                task_id=task_id,
                chunks=chunks,
                now=now,
                cap_bytes=settings.output_cap_bytes,
                max_chunk_bytes=settings.max_chunk_bytes,
            )
    else:
        update = TaskUpdate.model_validate(body)

        def write(session: AsyncSession) -> Awaitable[Any]:
            return service.update_task(
                session, task_id=task_id, body=update, now=now, prices=ctx.prices
            )

    async with ctx.db.write() as session:
        if message_id is not None and not await claim_message(session, task_id, message_id, now):
            return "duplicate"
        await write(session)
    return "stored"


async def prune_message_ids(ctx: AppContext) -> None:
    """Forget stored message ids older than `ID_RETENTION`."""
    async with ctx.db.write() as session:
        cutoff = ctx.clock.now() - ID_RETENTION
        await session.execute(delete(IngressMessage).where(IngressMessage.stored_at < cutoff))
