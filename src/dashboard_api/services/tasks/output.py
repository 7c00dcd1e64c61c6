"""Task output: appending chunks with gap-free seqs, in one statement when nothing is special."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy import insert, text, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.util import identity_key

from dashboard_api.bounded import BoundedCache
from dashboard_api.db.dialect import backend_of
from dashboard_api.db.engine import Database, PendingEvent, emit
from dashboard_api.db.models import Task, TaskOutputChunk
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

_T = Task.__table__


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
_SNAPSHOT_SQL = ", ".join(c.name for c in _SNAPSHOT_COLUMNS)
_TERMINAL_SQL = ", ".join(f"'{s}'" for s in sorted(TERMINAL_STATUSES))


# The common append (a running task that already has output, and whose log has room for
# every chunk) in one statement: the UPDATE both takes the row lock and moves the seq
# counter, so concurrent appends still get contiguous, gap-free seqs in commit order.
# It renews a running task's lease in the same statement, only when less than half of it
# is left (services/leases.py): otherwise the lease keeps its value, and the append
# stays the write it was.
def _append_sql(*, returning: str, extra_where: str = "") -> str:
    # Interpolated: column names and status literals from our own constants, no input.
    return f"""
    WITH t AS (
        UPDATE tasks
        SET output_seq = output_seq + CAST(:n AS integer),
            output_bytes = output_bytes + CAST(:size AS bigint),
            updated_at = CAST(:now AS timestamptz),
            lease_expires_at = CASE
                WHEN status = 'running' AND lease_expires_at
                    < CAST(:now AS timestamptz) + lease_seconds * interval '0.5 second'
                THEN CAST(:now AS timestamptz) + lease_seconds * interval '1 second'
                ELSE lease_expires_at END
        WHERE task_id = CAST(:task_id AS varchar)
          AND status NOT IN ({_TERMINAL_SQL})
          AND NOT output_truncated
          AND first_output_at IS NOT NULL
          AND output_bytes + CAST(:size AS bigint) <= CAST(:cap AS bigint){extra_where}
        RETURNING {returning}
    ), c AS (
        INSERT INTO task_output_chunks (task_id, seq, stream, content, created_at)
        SELECT CAST(:task_id AS varchar), t.output_seq - CAST(:n AS integer) + u.ord,
               u.stream, u.content, CAST(:now AS timestamptz)
        FROM t, unnest(CAST(:streams AS varchar[]), CAST(:contents AS text[]))
            WITH ORDINALITY AS u(stream, content, ord)
    )
    SELECT {returning} FROM t
    """  # noqa: S608


_APPEND_WHOLE_PG = text(_append_sql(returning=_SNAPSHOT_SQL)).columns(*_SNAPSHOT_COLUMNS)
# The same append for a task in no conversation (see `append_output_alone`). Its
# conversation_id is checked on the row the UPDATE locks (the newest version when it
# waited), so a task linked meanwhile goes the long way.
_APPEND_ALONE_PG = text(
    _append_sql(
        returning="output_seq",
        extra_where="""
          AND conversation_id IS NULL
          AND NOT EXISTS (
              SELECT 1 FROM conversation_tasks m WHERE m.task_id = tasks.task_id)""",
    )
).columns(_T.c.output_seq)

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
    params = {
        "task_id": task_id,
        "n": n,
        "size": sum(sizes),
        "now": now,
        "cap": cap_bytes,
        "streams": [c.stream for c in chunks],
        "contents": [c.content for c in chunks],
    }
    async with db.alone() as conn:
        last_seq = (await conn.execute(_APPEND_ALONE_PG, params)).scalar()
    if last_seq is None:
        _ALONE.pop(task_id, None)  # the transaction tells what it is (see append_output)
        return None
    first_seq = last_seq - n + 1
    stored = [(c.stream, c.content) for c in chunks]
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
    if backend_of(session) == "postgresql":
        params = {
            "task_id": task_id,
            "n": n,
            "size": size,
            "now": now,
            "cap": cap_bytes,
            "streams": [s for s, _ in stored],
            "contents": [c for _, c in stored],
        }
        row = (await session.execute(_APPEND_WHOLE_PG, params)).first()
    else:
        moved = (
            update(Task)
            .where(
                _T.c.task_id == task_id,
                _T.c.status.not_in(TERMINAL_STATUSES),
                _T.c.output_truncated.is_(False),
                _T.c.first_output_at.is_not(None),
                _T.c.output_bytes + size <= cap_bytes,
            )
            .values(
                output_seq=_T.c.output_seq + n,
                output_bytes=_T.c.output_bytes + size,
                updated_at=now,
            )
            .returning(*_SNAPSHOT_COLUMNS, _T.c.lease_expires_at, _T.c.lease_seconds)
        )
        row = (await session.execute(moved)).first()
        if row is not None:
            # SQLite cannot compute the renewal in the statement (its timestamps are
            # text); a second one renews, once per half lease (writers are serialized).
            if (
                row.status == "running"
                and row.lease_seconds
                and renewal_due(row.lease_expires_at, row.lease_seconds, now)
            ):
                await session.execute(
                    update(Task)
                    .where(_T.c.task_id == task_id)
                    .values(lease_expires_at=lease_end(now, row.lease_seconds))
                )
            base = row.output_seq - n
            # Rows as execution parameters: a multi-row `.values(rows)` has no cache key
            # and would be compiled on every append.
            rows = [
                {"task_id": task_id, "seq": base + i, "stream": s, "content": c, "created_at": now}
                for i, (s, c) in enumerate(stored, start=1)
            ]
            await session.execute(insert(CHUNKS_TABLE), rows)
    if row is None:
        return None
    after = TaskSnapshot(**{name: row._mapping[name] for name in TaskSnapshot.__slots__})
    await task_written(session, replace(after, output_seq=after.output_seq - n), after)
    first_seq = after.output_seq - n + 1
    emit_output(session, task_id, first_seq, stored, now)
    return AppendResult(first_seq=first_seq, last_seq=after.output_seq, truncated=False), after
