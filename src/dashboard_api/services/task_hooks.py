"""What other features do inside the transaction of every task write.

Every write path of `services.tasks` (register, update, claim, cancel, output) calls
`task_written` with the task as it was before and as it is now, in the same transaction,
so that derived data (analytics rollups, conversation replies and totals) can never
disagree with the tasks themselves.

Paths that write many tasks in one transaction (`services.tasks.record_finished_tasks`:
a request of OpenTelemetry spans) call `tasks_written` with all the writes instead: each
hook then sees the whole batch at once and may handle it in a few statements whatever
its size (one analytics insert, one read of the budgets), where one call per write
would cost statements per task.

The reactions are `TaskHook`s, assembled in a fixed order by `create_app` and handed
down to every session of the app's database (`with_task_hooks`), the way settings are.
This module is a leaf: the features' hooks import it, never the other way round.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Table
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
    failure_reason: str | None
    # Moves only on output appends, which publish no `task_status` (conversations use it).
    output_seq: int = 0


# An output append to a task that already has output, is not ended, has room for every
# chunk and is in no conversation (neither linked nor counted as a descendant) moves only
# output_seq, output_bytes and updated_at. No hook reacts to that: analytics counts
# nothing of it, conversations only follow tasks that are theirs. Such appends are
# therefore written as one statement without a transaction and without calling
# `task_written` (`services.tasks.append_output_alone`: three round trips fewer on the
# agents' hottest path). A hook that must see them sets this to False (and
# tests/tasks/test_plain_appends.py tells whoever adds a hook).
PLAIN_APPENDS_NEED_NO_HOOKS = True


def snapshot(task: object) -> TaskSnapshot:
    """Capture a `Task` row's derived-data fields."""
    return TaskSnapshot(**{f: getattr(task, f) for f in TaskSnapshot.__slots__})


class TaskWriteHook(Protocol):
    """A feature's reaction to one task write, run inside the write's transaction (None
    before: the task is new)."""

    async def __call__(
        self, session: AsyncSession, before: TaskSnapshot | None, after: TaskSnapshot
    ) -> None: ...


# One write: the task before (None: new) and after.
TaskWrite = tuple[TaskSnapshot | None, TaskSnapshot]


class TaskBatchHook(Protocol):
    """A feature's reaction to several writes of distinct tasks in one transaction: the
    same rows as the one-write hook applied to each write in order (derived data stays
    exact), in statements that do not grow with the number of writes. Announcements may
    be coarser: a state that a budget passes through within the batch is not announced
    on its own."""

    async def __call__(self, session: AsyncSession, writes: Sequence[TaskWrite]) -> None: ...


# Rows to insert (a table and one row's values each).
NewRows = list[tuple[Table, dict[str, Any]]]


class NewTaskRowsHook(Protocol):
    """A feature whose reaction to a new task is only rows to insert: those rows (none
    when it has nothing to record), for the registration to write with the task."""

    def __call__(self, session: AsyncSession, after: TaskSnapshot) -> NewRows: ...


@dataclass(frozen=True, slots=True)
class TaskHook:
    """A feature's hook: `one` for a single write; `many` for a batch (None: `one` for
    each write in turn, for a feature whose writes cost no statement when they do not
    concern it); `new_rows` (optional) for a registration: the rows `one` would insert
    for a new task, handed to the registration's own statement (on PostgreSQL one
    statement writes the task and all of them), and then `one` is not called for it."""

    one: TaskWriteHook
    many: TaskBatchHook | None = None
    new_rows: NewTaskRowsHook | None = None


# Where the app's hooks travel: the info of every session of its database.
_HOOKS_KEY = "task_write_hooks"


def with_task_hooks(info: dict[str, Any], hooks: Sequence[TaskHook]) -> dict[str, Any]:
    """`info` (a session's) with the hooks every task write of that session runs, in order."""
    return {**info, _HOOKS_KEY: tuple(hooks)}


def _hooks(session: AsyncSession) -> tuple[TaskHook, ...]:
    hooks: tuple[TaskHook, ...] | None = session.info.get(_HOOKS_KEY)
    if hooks is None:
        # A session of a database that create_app did not set up (a test's, a script's):
        # writing tasks there would leave the derived data behind without a word.
        raise RuntimeError("This session writes tasks but was given no task hooks.")
    return hooks


async def task_written(
    session: AsyncSession, before: TaskSnapshot | None, after: TaskSnapshot
) -> None:
    """Apply the consequences of one task write (None before: the task is new)."""
    for hook in _hooks(session):
        await hook.one(session, before, after)


def new_task_rows(session: AsyncSession, after: TaskSnapshot) -> NewRows:
    """The rows the hooks with a `new_rows` form insert for the new task `after`, in
    hook order: the registration writes them with the task, then calls
    `new_task_written`."""
    return [
        row for hook in _hooks(session) if hook.new_rows for row in hook.new_rows(session, after)
    ]


async def new_task_written(session: AsyncSession, after: TaskSnapshot) -> None:
    """`task_written(session, None, after)` for a task whose registration has written the
    rows of `new_task_rows` with it: the other hooks, in order."""
    for hook in _hooks(session):
        if hook.new_rows is None:
            await hook.one(session, None, after)


async def tasks_written(session: AsyncSession, writes: Sequence[TaskWrite]) -> None:
    """Apply the consequences of writes of distinct tasks made in one transaction: each
    hook in turn over the whole batch (its batch form when it has one)."""
    if not writes:
        return
    for hook in _hooks(session):
        if hook.many is not None:
            await hook.many(session, writes)
        else:
            for before, after in writes:
                await hook.one(session, before, after)
