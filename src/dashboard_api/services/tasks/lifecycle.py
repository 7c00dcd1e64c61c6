"""A task's life: registration, the status state machine, updates, claims, cancellation."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from types import SimpleNamespace
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.util import identity_key

from dashboard_api.db.dialect import dialect_of
from dashboard_api.db.engine import emit
from dashboard_api.db.models import Task, TaskEvent
from dashboard_api.errors import Conflict, NotFound
from dashboard_api.ids import new_id
from dashboard_api.money import usd_to_micros
from dashboard_api.schemas.tasks import TaskCreate, TaskUpdate
from dashboard_api.schemas.tasks_json import summary_doc
from dashboard_api.services.budgets.holds import not_held
from dashboard_api.services.leases import (
    REPORTED_BY_AGENT,
    default_lease_seconds,
    lease_end,
    renewed,
)
from dashboard_api.services.pricing import PriceTable
from dashboard_api.services.task_hooks import (
    TaskSnapshot,
    new_task_rows,
    new_task_written,
    snapshot,
    task_written,
)
from dashboard_api.services.tasks.reads import EVENTS_TABLE, TASK_ROW, TASKS_TABLE, AnyRow
from dashboard_api.task_statuses import TERMINAL_STATUSES
from dashboard_api.timeutil import format_ts

_T = Task.__table__


ALLOWED_MOVES: dict[str, frozenset[str]] = {
    "queued": frozenset({"running", "cancelled", "failed"}),
    "running": frozenset({"completed", "failed", "cancelled"}),
    "completed": frozenset(),
    "failed": frozenset(),
    "cancelled": frozenset(),
}

# Literal (not bound) constants, so that PostgreSQL matches the expression indexes.


def publish_status(session: AsyncSession, task: Any) -> None:
    """Queue the task's `task_status` event on `task:{id}` and `tasks` (a `Task` or its
    attributes), published after the commit."""
    # The same document as task_summary(task).model_dump(mode="json"), without the model.
    payload = {"type": "task_status", **summary_doc(task)}
    emit(session, f"task:{task.task_id}", payload)
    emit(session, "tasks", payload)


async def locked_task(session: AsyncSession, task_id: str) -> Task:
    """The task row, locked for the rest of the transaction."""
    stmt = dialect_of(session).lock_for_update(select(Task).where(Task.task_id == task_id))
    result = await session.scalars(stmt.execution_options(populate_existing=True))
    task: Task | None = result.first()
    if task is None:
        raise NotFound(f"No task {task_id!r}.")
    return task


async def after_write(session: AsyncSession, before: TaskSnapshot | None, task: Task) -> None:
    await session.flush()
    await task_written(session, before, snapshot(task))


def _record_status(session: AsyncSession, task: Task, at: datetime) -> None:
    session.add(TaskEvent(task_id=task.task_id, type="status", status=task.status, at=at))


def enter_status(task: Any, status: str, now: datetime, *, lease_seconds: int) -> None:
    """Move `task` (a `Task` or its attributes) to `status` at `now`: a task entering
    running takes a lease (its own `lease_seconds`, else the one given), an ended one
    holds none."""
    task.status = status
    if status == "running":
        if task.started_at is None:
            task.started_at = now
        task.lease_seconds = task.lease_seconds or lease_seconds
        task.lease_expires_at = lease_end(now, task.lease_seconds)
    if status in TERMINAL_STATUSES:
        task.completed_at = now
        task.lease_expires_at = None
        if task.started_at is not None:
            task.duration_us = max(0, int((now - task.started_at).total_seconds() * 1_000_000))


def renew_lease(task: Any, now: datetime, *, lease_seconds: int) -> bool:
    """Renew a running task's lease when less than half of it is left (a producer call at
    `now`); whether it did."""
    if task.status != "running":
        return False
    seconds = task.lease_seconds or lease_seconds
    renewal = renewed(task.lease_expires_at, seconds, now)
    if renewal is None:
        return False
    task.lease_seconds = seconds
    task.lease_expires_at = renewal
    return True


def recompute_cost(task: Any, prices: PriceTable) -> None:  # a Task or its attributes
    if task.cost_reported:
        return
    task.cost_micros = prices.cost_micros(
        task.model,
        input_tokens=task.input_tokens,
        output_tokens=task.output_tokens,
        cache_read_tokens=task.cache_read_tokens,
        cache_write_tokens=task.cache_write_tokens,
    )


async def register_task(
    session: AsyncSession,
    *,
    body: TaskCreate,
    now: datetime,
    prices: PriceTable,
    attempt: int = 1,
    retry_of: str | None = None,
) -> Any:
    """Create a task; its initial status is its first status event. 409 if the id exists.

    Returns the task's attributes (a plain object, like `update_task`). Written without
    the ORM: its existence check, unit-of-work flush and instance bookkeeping were a third
    of a registration's server CPU. INSERT ... ON CONFLICT DO NOTHING is the existence
    check too, so two concurrent registrations of one id give one 201 and one 409.

    A task registered running takes its lease at once; `attempt` and `retry_of` are
    set for a retry (services/tasks/leases.py)."""
    task = new_task(body, now, lease_seconds=default_lease_seconds(session))
    task.attempt, task.retry_of = attempt, retry_of
    recompute_cost(task, prices)
    values = {("metadata" if k == "metadata_" else k): v for k, v in vars(task).items()}
    after = snapshot(task)
    # The task, its first status event and the hooks' own rows (analytics' pending row):
    # one statement on PostgreSQL, where they were three statements and round trips.
    event = {"task_id": task.task_id, "type": "status", "status": task.status, "at": now}
    rows = [(EVENTS_TABLE, event), *new_task_rows(session, after)]
    if not await dialect_of(session).insert_with_rows(session, TASKS_TABLE, values, rows):
        raise Conflict(f"Task {task.task_id!r} already exists.")
    await new_task_written(session, after)
    publish_status(session, task)
    return task


INSERT_EVENT = insert(EVENTS_TABLE)


async def insert_status_event(session: AsyncSession, task: Any, at: datetime) -> None:
    """Record the task's current status in its history (written without the ORM)."""
    await session.execute(
        INSERT_EVENT, {"task_id": task.task_id, "type": "status", "status": task.status, "at": at}
    )


def new_task(body: TaskCreate, now: datetime, *, lease_seconds: int) -> SimpleNamespace:
    """The attributes of a task as `body` registers it at `now` (cost not computed yet);
    registered running, it holds a lease (`lease_seconds` unless the body names one)."""
    task = SimpleNamespace(
        task_id=body.task_id or new_id(),
        status=body.status,
        agent_type=body.agent_type,
        assigned_agent=body.assigned_agent,
        source=body.source,
        input_message=body.input_message,
        result=None,
        error=None,
        user_id=body.user_id,
        conversation_id=body.conversation_id,
        parent_task_id=body.parent_task_id,
        flow_id=body.flow_id,
        model=body.model,
        cost_micros=0,
        cost_reported=False,
        input_tokens=0,
        output_tokens=0,
        cache_read_tokens=0,
        cache_write_tokens=0,
        duration_us=None,
        created_at=body.created_at or now,
        started_at=now if body.status == "running" else None,
        completed_at=None,
        updated_at=now,
        first_output_at=None,
        cancel_requested=False,
        metadata_=body.metadata,
        output_seq=0,
        output_bytes=0,
        output_truncated=False,
        lease_expires_at=None,
        lease_seconds=body.lease_seconds,
        failure_reason=None,
        attempt=1,
        max_attempts=body.max_attempts,
        retry_of=None,
        retry_task_id=None,
    )
    if body.status == "running":
        enter_status(task, "running", now, lease_seconds=lease_seconds)
    return task


async def update_task(
    session: AsyncSession, *, task_id: str, body: TaskUpdate, now: datetime, prices: PriceTable
) -> Any:
    """Apply a producer update: a legal status move and/or new metrics, result, metadata.
    On a running task it also renews the lease (when due); a task reported failed gets
    `failure_reason` "agent".

    Returns the task as it is now (a `Task`, or a plain object with its attributes)."""
    if identity_key(Task, task_id) in session.identity_map:
        # The caller holds the ORM object: change it, so that it stays true.
        return await _update_task_orm(session, task_id, body, now, prices)
    # Without the ORM (its load and unit-of-work flush were much of this request's CPU):
    # the locked row is read into a plain object that the same rules below change, and
    # the changed columns are written with one UPDATE.
    stmt = dialect_of(session).lock_for_update(select(*TASK_ROW).where(_T.c.task_id == task_id))
    row = (await session.execute(stmt)).first()
    if row is None:
        raise NotFound(f"No task {task_id!r}.")
    task = SimpleNamespace(**row._mapping)
    before = snapshot(task)
    lease = default_lease_seconds(session)
    changed, moved = apply_update(task, task_id, body, now, prices, lease_seconds=lease)
    renewed_lease = not moved and renew_lease(task, now, lease_seconds=lease)
    if not changed and not renewed_lease:
        return task
    await _store_changes(session, task, row, moved=moved, now=now)
    if changed:  # a renewal alone is no news: no hooks, no event
        await task_written(session, before, snapshot(task))
        publish_status(session, task)
    return task


async def _store_changes(
    session: AsyncSession, task: SimpleNamespace, row: AnyRow, *, moved: bool, now: datetime
) -> None:
    """Write the attributes of `task` that differ from `row` (its locked row as read, by
    `TASK_ROW`) with one UPDATE, and a status event when its status moved."""
    old = row._mapping
    values = {
        ("metadata" if name == "metadata_" else name): value
        for name, value in vars(task).items()
        if value != old[name]
    }
    await session.execute(update(TASKS_TABLE).where(_T.c.task_id == task.task_id).values(values))
    if moved:
        await session.execute(
            INSERT_EVENT,
            {"task_id": task.task_id, "type": "status", "status": task.status, "at": now},
        )


def apply_update(
    task: Any,
    task_id: str,
    body: TaskUpdate,
    now: datetime,
    prices: PriceTable,
    *,
    lease_seconds: int,
) -> tuple[bool, bool]:
    """Change `task` (a `Task` or its attributes) as `body` says: (changed, status moved
    so a status event is due). 409 for a move the state machine forbids."""
    fields = body.model_fields_set
    changed = moved = False
    if body.status is not None and body.status != task.status:
        if body.status not in ALLOWED_MOVES[task.status]:
            raise Conflict(
                f"Task {task_id!r} is {task.status}; it cannot move to {body.status}.",
                extra={"current_status": task.status},
            )
        enter_status(task, body.status, now, lease_seconds=lease_seconds)
        if body.status == "failed":
            task.failure_reason = REPORTED_BY_AGENT
        changed = moved = True
    for name in ("assigned_agent", "result", "error", "model"):
        if name in fields and getattr(body, name) != getattr(task, name):
            setattr(task, name, getattr(body, name))
            changed = True
    for name in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens"):
        value = getattr(body, name)
        if value is not None and value != getattr(task, name):
            setattr(task, name, value)
            changed = True
    if body.cost_usd is not None:
        micros = usd_to_micros(body.cost_usd)
        if not task.cost_reported or micros != task.cost_micros:
            task.cost_reported = True
            task.cost_micros = micros
            changed = True
    if body.metadata is not None and body.metadata != task.metadata_:
        task.metadata_ = body.metadata
        changed = True
    if changed:
        recompute_cost(task, prices)
        task.updated_at = now
    return changed, moved


async def _update_task_orm(
    session: AsyncSession, task_id: str, body: TaskUpdate, now: datetime, prices: PriceTable
) -> Task:
    task = await locked_task(session, task_id)
    before = snapshot(task)
    lease = default_lease_seconds(session)
    changed, moved = apply_update(task, task_id, body, now, prices, lease_seconds=lease)
    if moved:
        _record_status(session, task, now)
    if changed:
        await after_write(session, before, task)
        publish_status(session, task)
    elif renew_lease(task, now, lease_seconds=lease):
        await session.flush()
    return task


async def claim_task(
    session: AsyncSession,
    *,
    agent_types: Sequence[str],
    agent: str,
    now: datetime,
    lease_seconds: int | None = None,
) -> Any:
    """Atomically move the oldest queued task of these types to running for `agent`: the
    task's attributes (a plain object, like `update_task`), or None when none is queued.

    The oldest row is read and locked in one statement (SKIP LOCKED: concurrent claimers
    take different tasks) and written without the ORM. The task is leased to the agent for
    `lease_seconds` (else the length it was registered with, else the app's default)."""
    pick = (
        select(*TASK_ROW)
        .where(
            _T.c.status == "queued",
            _T.c.agent_type.in_(list(agent_types)),
            # Budgets on hold: part of this statement, so no check can go stale (holds.py).
            not_held(_T, now),
        )
        .order_by(_T.c.created_at, _T.c.task_id)
        .limit(1)
    )
    row = (await session.execute(dialect_of(session).lock_skip_locked(pick))).first()
    if row is None:
        return None
    task = SimpleNamespace(**row._mapping)
    before = snapshot(task)
    task.assigned_agent = agent
    if lease_seconds is not None:
        task.lease_seconds = lease_seconds
    enter_status(task, "running", now, lease_seconds=default_lease_seconds(session))
    task.updated_at = now
    await _store_changes(session, task, row, moved=True, now=now)
    await task_written(session, before, snapshot(task))
    publish_status(session, task)
    return task


async def cancel_task(session: AsyncSession, *, task_id: str, now: datetime) -> Task:
    """Cancel a queued task now; ask a running task's agent to stop; 409 when already ended."""
    task = await locked_task(session, task_id)
    if task.status in TERMINAL_STATUSES:
        raise Conflict(
            f"Task {task_id!r} is already {task.status}.", extra={"current_status": task.status}
        )
    before = snapshot(task)
    if task.status == "queued":
        enter_status(task, "cancelled", now, lease_seconds=default_lease_seconds(session))
        _record_status(session, task, now)
    elif not task.cancel_requested:
        task.cancel_requested = True
        emit(
            session,
            f"task:{task_id}",
            {"type": "task_cancel_requested", "task_id": task_id, "requested_at": format_ts(now)},
        )
    else:
        return task
    task.updated_at = now
    await after_write(session, before, task)
    publish_status(session, task)
    return task
