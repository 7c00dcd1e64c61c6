"""Task leases (docs/api.md §13): heartbeats, the lease reaper's move, retries.

A running task holds a lease (`lease_expires_at`); the write paths in `lifecycle` and
`output` take and renew it (lazily, see services/leases.py). This module holds what is
about leases alone: a producer's heartbeat on a task, the renewal a heartbeat of the
assigned agent gives its tasks, the reaper's move to `failed` when a lease has run out,
and retries (by hand, or automatically after an expiry with attempts left).

The reaper and a late producer call cannot both win: the reaper reads only rows whose
lease has run out, locking them (`FOR UPDATE SKIP LOCKED`: a row a producer is writing
is left for the next run), and writes the move with the same condition. A producer call
locks the row as well; whichever comes second sees what the first did (a renewed lease,
or a failed task that refuses it with 409).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from types import SimpleNamespace
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard_api.db.dialect import dialect_of
from dashboard_api.db.models import Task
from dashboard_api.errors import Conflict, NotFound
from dashboard_api.schemas.tasks import TaskCreate
from dashboard_api.services.leases import (
    LEASE_EXPIRED,
    LEASE_EXPIRED_ERROR,
    default_lease_seconds,
    renewal_due,
    renewed,
)
from dashboard_api.services.pricing import PriceTable
from dashboard_api.services.task_hooks import snapshot, task_written
from dashboard_api.services.tasks.lifecycle import (
    enter_status,
    insert_status_event,
    publish_status,
    register_task,
)
from dashboard_api.services.tasks.reads import TASK_ROW, TASKS_TABLE

_T = Task.__table__
RETRIABLE_STATUSES = frozenset({"failed", "cancelled"})


async def heartbeat_task(session: AsyncSession, *, task_id: str, now: datetime) -> None:
    """A producer's sign of life on a running task: renew its lease (when due). 404 for
    an unknown task; 409 with the current status when it is not running."""
    stmt = dialect_of(session).lock_for_update(
        select(_T.c.status, _T.c.lease_expires_at, _T.c.lease_seconds).where(
            _T.c.task_id == task_id
        ),
    )
    row = (await session.execute(stmt)).first()
    if row is None:
        raise NotFound(f"No task {task_id!r}.")
    if row.status != "running":
        raise Conflict(
            f"Task {task_id!r} is {row.status}; only a running task holds a lease.",
            extra={"current_status": row.status},
        )
    seconds = row.lease_seconds or default_lease_seconds(session)
    renewal = renewed(row.lease_expires_at, seconds, now)
    if renewal is not None:
        await session.execute(
            update(TASKS_TABLE)
            .where(_T.c.task_id == task_id)
            .values(lease_expires_at=renewal, lease_seconds=seconds)
        )


async def renew_agent_leases(session: AsyncSession, *, agent: str, now: datetime) -> int:
    """Renew (when due) the leases of the running tasks assigned to `agent` (its
    heartbeat); how many it renewed. Each renewal is conditional on the task still
    running, so one the reaper failed meanwhile stays failed."""
    rows = (
        await session.execute(
            select(_T.c.task_id, _T.c.lease_expires_at, _T.c.lease_seconds)
            .where(_T.c.status == "running", _T.c.assigned_agent == agent)
            .order_by(_T.c.task_id)  # rows written in one order: no deadlock between beats
        )
    ).all()
    default = default_lease_seconds(session)
    renewals = 0
    for task_id, expires_at, seconds in rows:
        seconds = seconds or default
        if not renewal_due(expires_at, seconds, now):
            continue
        result = await session.execute(
            update(TASKS_TABLE)
            .where(_T.c.task_id == task_id, _T.c.status == "running")
            .values(lease_expires_at=renewed(expires_at, seconds, now), lease_seconds=seconds)
        )
        renewals += result.rowcount or 0  # type: ignore[attr-defined]
    return renewals


@dataclass(frozen=True, slots=True)
class Expired:
    """A task the reaper failed, and the retry it queued (when attempts were left)."""

    task: Any
    retry: Any | None


async def expire_tasks(
    session: AsyncSession, *, now: datetime, prices: PriceTable, limit: int = 100
) -> list[Expired]:
    """Fail running tasks whose lease ran out before `now` (the lease reaper): `failed`,
    error "lease expired", failure_reason "lease_expired", through the ordinary write
    path (status event, hooks, `task_status` events); a task with attempts left gets its
    retry queued in the same transaction."""
    pick = (
        select(*TASK_ROW)
        .where(_T.c.status == "running", _T.c.lease_expires_at < now)
        .order_by(_T.c.lease_expires_at, _T.c.task_id)
        .limit(limit)
    )
    rows = (await session.execute(dialect_of(session).lock_skip_locked(pick))).all()
    out: list[Expired] = []
    for row in rows:
        task = SimpleNamespace(**row._mapping)
        before = snapshot(task)
        enter_status(task, "failed", now, lease_seconds=0)
        task.error = LEASE_EXPIRED_ERROR
        task.failure_reason = LEASE_EXPIRED
        task.updated_at = now
        old = row._mapping
        values = {
            ("metadata" if name == "metadata_" else name): value
            for name, value in vars(task).items()
            if value != old[name]
        }
        # The move itself, conditional on the lease being over (the row is locked, so
        # this holds; it is the rule written down where the write happens).
        moved = await session.execute(
            update(TASKS_TABLE)
            .where(
                _T.c.task_id == task.task_id,
                _T.c.status == "running",
                _T.c.lease_expires_at < now,
            )
            .values(values)
        )
        if not moved.rowcount:  # type: ignore[attr-defined]
            continue
        await insert_status_event(session, task, now)
        await task_written(session, before, snapshot(task))
        retry = None
        if task.attempt < task.max_attempts:
            retry = await _queue_retry(session, task, now, prices)
        publish_status(session, task)
        out.append(Expired(task, retry))
    return out


async def retry_task(
    session: AsyncSession, *, task_id: str, now: datetime, prices: PriceTable
) -> tuple[Any, bool]:
    """The retry of a failed or cancelled task: (new queued task, True), or (the retry
    made before, False). 404 for an unknown task; 409 with the current status otherwise."""
    stmt = dialect_of(session).lock_for_update(select(*TASK_ROW).where(_T.c.task_id == task_id))
    row = (await session.execute(stmt)).first()
    if row is None:
        raise NotFound(f"No task {task_id!r}.")
    task = SimpleNamespace(**row._mapping)
    if task.retry_task_id is not None:
        retry = (
            await session.execute(select(*TASK_ROW).where(_T.c.task_id == task.retry_task_id))
        ).first()
        if retry is not None:
            return SimpleNamespace(**retry._mapping), False
    if task.status not in RETRIABLE_STATUSES:
        raise Conflict(
            f"Task {task_id!r} is {task.status}; only a failed or cancelled task is retried.",
            extra={"current_status": task.status},
        )
    retry = await _queue_retry(session, task, now, prices)
    publish_status(session, task)
    return retry, True


async def _queue_retry(
    session: AsyncSession, task: SimpleNamespace, now: datetime, prices: PriceTable
) -> Any:
    """Register the retry of `task` (queued, attempt + 1) and link the two; `task` (the
    original's attributes) gets its `retry_task_id`."""
    body = TaskCreate.model_construct(
        task_id=None,
        agent_type=task.agent_type,
        input_message=task.input_message,
        source=task.source,
        status="queued",
        assigned_agent=None,
        model=task.model,
        user_id=task.user_id,
        conversation_id=task.conversation_id,
        parent_task_id=None,
        flow_id=task.flow_id,
        metadata=task.metadata_,
        created_at=None,
        lease_seconds=task.lease_seconds,
        max_attempts=task.max_attempts,
    )
    retry = await register_task(
        session, body=body, now=now, prices=prices, attempt=task.attempt + 1, retry_of=task.task_id
    )
    await session.execute(
        update(TASKS_TABLE)
        .where(_T.c.task_id == task.task_id)
        .values(retry_task_id=retry.task_id, updated_at=now)
    )
    task.retry_task_id = retry.task_id
    task.updated_at = now
    return retry
