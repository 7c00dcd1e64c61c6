"""Task output: appending chunks with gap-free seqs, in one statement when nothing is special."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.util import identity_key

from dashboard_api.bounded import BoundedCache
from dashboard_api.db.dialect import OutputAppend, dialect_of
from dashboard_api.db.engine import Database, PendingEvent, emit
from dashboard_api.db.models import ConversationTask, Task, TaskOutputChunk
from dashboard_api.errors import Conflict, PayloadTooLarge
from dashboard_api.schemas.tasks import OutputChunkIn
from dashboard_api.services.leases import default_lease_seconds, lease_end, renewal_due
from dashboard_api.services.task_hooks import (
    PLAIN_APPENDS_NEED_NO_HOOKS,
    TaskSnapshot,
    snapshot,
    task_written,
)
from dashboard_api.services.tasks.lifecycle import after_write, locked_task, renew_lease
from dashboard_api.services.tasks.reads import CHUNKS_TABLE
from dashboard_api.task_statuses import TERMINAL_STATUSES
from dashboard_api.timeutil import format_ts

_T = cast(Table, Task.__table__)


@dataclass(frozen=True, slots=True)
class AppendResult:
    first_seq: int | None
    last_seq: int
    truncated: bool


async def append_output(
    session: AsyncSession,
    *,
    task_id: str,
    chunks: Sequence[OutputChunkIn],
    now: datetime,
    cap_bytes: int,
    max_chunk_bytes: int,
    after_alone: bool = False,
) -> AppendResult:
    """Store chunks with the next gap-free seqs; content past the task's cap is dropped.

    The seq counter lives on the task row, which is locked for the transaction, so that
    concurrent appends (from any replica) are numbered in the order they commit.
    `after_alone`: `append_output_alone` was tried first and wrote nothing.
    """
    sizes = [len(c.content.encode()) for c in chunks]
    if any(size > max_chunk_bytes for size in sizes):
        raise PayloadTooLarge(f"A chunk's content is over {max_chunk_bytes} bytes.")
    whole = await _append_whole(session, task_id, chunks, sum(sizes), now, cap_bytes)
    if whole is not None:
        fast, after = whole
        _note_plain(task_id, after, after_alone=after_alone)
        return fast
    task = await locked_task(session, task_id)
    if task.status in TERMINAL_STATUSES:
        raise Conflict(
            f"Task {task_id!r} is {task.status}; it takes no more output.",
            extra={"current_status": task.status},
        )
    renew_lease(task, now, lease_seconds=default_lease_seconds(session))

    room = cap_bytes - task.output_bytes
    stored: list[tuple[str, str]] = []
    truncated = task.output_truncated
    for chunk, size in zip(chunks, sizes, strict=True):
        if truncated:
            break
        if size <= room:
            stored.append((chunk.stream, chunk.content))
            room -= size
            continue
        # Keep what fits, cut on a character boundary, and drop everything after it.
        head = chunk.content.encode()[: max(room, 0)].decode("utf-8", errors="ignore")
        if head:
            stored.append((chunk.stream, head))
            room -= len(head.encode())
        truncated = True

    if not stored:
        if truncated and not task.output_truncated:
            task.output_truncated = True
            task.updated_at = now
        return AppendResult(first_seq=None, last_seq=task.output_seq, truncated=truncated)

    before = snapshot(task)
    first_seq = task.output_seq + 1
    rows = [
        {"task_id": task_id, "seq": first_seq + i, "stream": s, "content": c, "created_at": now}
        for i, (s, c) in enumerate(stored)
    ]
    await session.execute(insert(TaskOutputChunk), rows)
    task.output_seq = first_seq + len(rows) - 1
    task.output_bytes = cap_bytes - room
    task.output_truncated = truncated
    if task.first_output_at is None:
        task.first_output_at = now
    task.updated_at = now
    await after_write(session, before, task)
    emit_output(session, task_id, first_seq, stored, now)
    if not truncated:
        _note_plain(task_id, task, after_alone=False)
    return AppendResult(first_seq=first_seq, last_seq=task.output_seq, truncated=truncated)


def _output_events(
    task_id: str, first_seq: int, stored: Sequence[tuple[str, str]], now: datetime
) -> list[PendingEvent]:
    channel = f"task:{task_id}"
    stamp = format_ts(now)
    return [
        (
            channel,
            {
                "type": "task_output",
                "task_id": task_id,
                "seq": first_seq + i,
                "stream": stream,
                "content": content,
                "created_at": stamp,
            },
        )
        for i, (stream, content) in enumerate(stored)
    ]


def emit_output(
    session: AsyncSession,
    task_id: str,
    first_seq: int,
    stored: Sequence[tuple[str, str]],
    now: datetime,
) -> None:
    for channel, payload in _output_events(task_id, first_seq, stored, now):
        emit(session, channel, payload)


_SNAPSHOT_COLUMNS = tuple(_T.c[name] for name in TaskSnapshot.__slots__)
_SEQ_COLUMNS = (_T.c.output_seq,)
# The members of conversations: a task one of them names needs the hooks on every write.
_MEMBERS = cast(Table, ConversationTask.__table__)


def _common_append(
    task_id: str,
    chunks: Sequence[tuple[str, str]],
    size: int,
    now: datetime,
    cap_bytes: int,
    *,
    alone: bool,
) -> OutputAppend:
    """The common append (a task not ended that already has output, and whose log has
    room for every chunk), for the dialect to write in as few round trips as it can; it
    renews a running task's lease only when less than half of it is left
    (services/leases.py), so that the append otherwise stays the write it is."""

    def renewal(row: Any) -> datetime | None:
        running = row.status == "running" and row.lease_seconds
        if running and renewal_due(row.lease_expires_at, row.lease_seconds, now):
            return lease_end(now, row.lease_seconds)
        return None

    return OutputAppend(
        tasks=_T,
        chunks_table=CHUNKS_TABLE,
        task_id=task_id,
        chunks=chunks,
        size=size,
        now=now,
        cap_bytes=cap_bytes,
        returning=_SEQ_COLUMNS if alone else _SNAPSHOT_COLUMNS,
        renewal=renewal,
        unless_member_of=_MEMBERS if alone else None,
    )


# Which tasks' appends are tried alone (per process, bounded, a hint only: the statement
# decides). True: its last append went through the transaction and left it plain
# (running, with output, in no conversation), or was written alone. False: a common
# append of it needed the transaction all the same (a conversation's task, whose hook
# runs on every write): not tried alone again. Unknown tasks (each one's first output
# among them) go straight to the transaction, so that a failed attempt, one wasted round
# trip, is rare.
_ALONE: BoundedCache[str, bool] = BoundedCache(8192)


async def store_output(
    db: Database,
    *,
    task_id: str,
    chunks: Sequence[OutputChunkIn],
    now: datetime,
    cap_bytes: int,
    max_chunk_bytes: int,
) -> AppendResult:
    """Append output for the producer API: the one-statement form when it applies
    (`append_output_alone`), else `append_output` in a transaction of its own, with the
    hooks (and the errors: unknown or finished task, oversize chunk)."""
    alone = worth_trying_alone(db, task_id)
    if alone:
        result = await append_output_alone(
            db,
            task_id=task_id,
            chunks=chunks,
            now=now,
            cap_bytes=cap_bytes,
            max_chunk_bytes=max_chunk_bytes,
        )
        if result is not None:
            return result
    async with db.write() as session:
        return await append_output(
            session,
            task_id=task_id,
            chunks=chunks,
            now=now,
            cap_bytes=cap_bytes,
            max_chunk_bytes=max_chunk_bytes,
            after_alone=alone,
        )


def worth_trying_alone(db: Database, task_id: str) -> bool:
    """Whether `append_output_alone` is worth a try for this task (see `_ALONE`)."""
    return db.writes_alone and PLAIN_APPENDS_NEED_NO_HOOKS and _ALONE.get(task_id, False)


async def append_output_alone(
    db: Database,
    *,
    task_id: str,
    chunks: Sequence[OutputChunkIn],
    now: datetime,
    cap_bytes: int,
    max_chunk_bytes: int,
) -> AppendResult | None:
    """The common append as one statement that commits on its own (PostgreSQL); None
    (nothing written) when it is not the common case: then call `append_output` in a
    transaction, which also answers the errors.

    The common case is that of `_append_whole` for a task in no conversation: then no
    hook reacts to the append (`task_hooks.PLAIN_APPENDS_NEED_NO_HOOKS`), and BEGIN, the
    hooks' membership SELECT and COMMIT (three of its four round trips) are not needed.
    The UPDATE still takes the task row's lock and moves the seq counter in the same
    statement as the INSERT, so seqs stay gap-free and in commit order; the chunks are
    durable when the statement returns, before anything is published or answered.
    Only for a task `worth_trying_alone` (the caller, `store_output`, asks it).
    """
    sizes = [len(c.content.encode()) for c in chunks]
    if not chunks or any(size > max_chunk_bytes for size in sizes):
        return None
    n = len(chunks)
    stored = [(c.stream, c.content) for c in chunks]
    append = _common_append(task_id, stored, sum(sizes), now, cap_bytes, alone=True)
    async with db.alone() as conn:
        last_seq = await db.dialect.append_alone(conn, append)
    if last_seq is None:
        _ALONE.pop(task_id, None)  # the transaction tells what it is (see append_output)
        return None
    first_seq = last_seq - n + 1
    await db.publish(_output_events(task_id, first_seq, stored, now))
    return AppendResult(first_seq=first_seq, last_seq=last_seq, truncated=False)


def _note_plain(task_id: str, after: TaskSnapshot | Task, *, after_alone: bool) -> None:
    """After an append in a transaction: whether the next one may be tried alone."""
    if after_alone:
        # A common append (it was written by `_append_whole` or found nothing special)
        # that the single statement refused: the task is in a conversation.
        _ALONE.put(task_id, False)
    elif (
        after.conversation_id is None
        and after.status not in TERMINAL_STATUSES
        and after.first_output_at is not None
        and _ALONE.get(task_id) is None
    ):
        _ALONE.put(task_id, True)


async def _append_whole(
    session: AsyncSession,
    task_id: str,
    chunks: Sequence[OutputChunkIn],
    size: int,
    now: datetime,
    cap_bytes: int,
) -> tuple[AppendResult, TaskSnapshot] | None:
    """Store every chunk without the ORM and in as few round trips as possible, when
    nothing about the append is special; None (nothing written) sends it the long way:
    missing or finished task, first output, cap reached, or a caller holding the row."""
    if identity_key(Task, task_id) in session.identity_map:
        return None
    n = len(chunks)
    stored = [(c.stream, c.content) for c in chunks]
    append = _common_append(task_id, stored, size, now, cap_bytes, alone=False)
    row = await dialect_of(session).append_output(session, append)
    if row is None:
        return None
    after = TaskSnapshot(**{name: row._mapping[name] for name in TaskSnapshot.__slots__})
    await task_written(session, replace(after, output_seq=after.output_seq - n), after)
    first_seq = after.output_seq - n + 1
    emit_output(session, task_id, first_seq, stored, now)
    return AppendResult(first_seq=first_seq, last_seq=after.output_seq, truncated=False), after
