"""What other features do inside the transaction of every task write.

Every write path of `services.tasks` (register, update, claim, cancel, output) calls
`task_written` with the task as it was before and as it is now, in the same transaction,
so that derived data (analytics rollups, conversation replies and totals) can never
disagree with the tasks themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession


@dataclass(frozen=True, slots=True)
class TaskSnapshot:
    """The fields of a task that derived data depends on."""

    task_id: str
    status: str
    agent_type: str
    source: str
    model: str | None
    user_id: str | None
    conversation_id: str | None
    parent_task_id: str | None
    flow_id: str | None
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    first_output_at: datetime | None
    duration_us: int | None
    cost_micros: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    result: str | None
    error: str | None
    # Moves only on output appends, which publish no `task_status` (conversations use it).
    output_seq: int = 0


# An output append to a task that already has output, is not ended, has room for every
# chunk and is in no conversation (neither linked nor counted as a descendant) moves only
# output_seq, output_bytes and updated_at. No hook reacts to that: analytics counts
# nothing of it, conversations only follow tasks that are theirs. Such appends are
# therefore written as one statement without a transaction and without calling
# `task_written` (`services.tasks.append_output_alone`: three round trips fewer on the
# agents' hottest path). A hook that must see them sets this to False (and
# tests/test_task_hooks.py tells whoever adds a hook).
PLAIN_APPENDS_NEED_NO_HOOKS = True


def snapshot(task: object) -> TaskSnapshot:
    """Capture a `Task` row's derived-data fields."""
    return TaskSnapshot(**{f: getattr(task, f) for f in TaskSnapshot.__slots__})


async def task_written(
    session: AsyncSession, before: TaskSnapshot | None, after: TaskSnapshot
) -> None:
    """Apply the consequences of one task write (None before: the task is new)."""
    # Features register their reactions here, in a fixed and visible order.
    # Imported here: services.conversations itself writes tasks through services.tasks.
    from dashboard_api.services.analytics.rollups import apply_task_write
    from dashboard_api.services.budgets.service import on_task_written as hold_budgets
    from dashboard_api.services.conversations import on_task_written

    # Lock order on PostgreSQL is task rows -> conversation row in every transaction
    # (posting a message locks its conversation before it creates the task), so
    # conversations run first; analytics only appends a row (no shared row locked).
    await on_task_written(session, before, after)
    await apply_task_write(session, before, after)
    # After analytics: the spend it reads includes this write's own contribution.
    await hold_budgets(session, before, after)
