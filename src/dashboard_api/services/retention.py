"""Retention: deleting old terminal tasks with their output and status events.

`prune_once` deletes the terminal tasks created before a cut-off in short batches: each
batch row-locks up to `batch_size` of them with SKIP LOCKED (PostgreSQL; SQLite's single
writer serializes batches anyway), deletes their output chunks, status events and
conversation memberships, then the tasks, and commits. No statement holds more than one
batch's rows, so a prune never blocks readers and writers for long, and two replicas
pruning at once share the work: a row one of them locked is skipped by the other, and
each row is deleted (and counted) once. A queued or running task is never selected, and
its row lock keeps it from changing status while a batch holds it.

What a prune keeps (docs/retention.md):

- The analytics rollups are left as they are: analytics of the pruned periods do not
  change, as long as a window's edges in a pruned period fall on its blocks (see
  `PRUNE_ALIGNMENT`).
- Task-list totals are counted from the same rollups, which still count the pruned
  tasks; so before deleting anything a prune records `analytics_state.pruned_before_s`
  (never lowered), and the list counts the tasks created before it from the tasks table
  (few rows once pruned) and only the blocks after it from the rollups.
- Each batch bumps `analytics_state.prunes`, part of the q-count cache's token
  (services/task_search.py): the per-hour counts cached before a batch are not trusted
  after it.
- Conversation totals are stored on the conversation and only ever adjusted by task
  writes: deleting a member task leaves them as they were.

The cut-off is moved down to a `PRUNE_ALIGNMENT` boundary, and the prune walks towards
it in steps of whole blocks holding about `STEP_ROWS` prunable tasks (raising
`pruned_before_s` to the end of the step first). After each step it raises
`analytics_state.empty_before_s`, before which the table holds no task (up to the step's
end, never past a task it kept), and the list counts only the tasks from there: about a
step's worth of rows, instead of walking the index entries of every row deleted so far
(they stay until vacuum). An insert of a task created before `empty_before_s` lowers it
in its own transaction (`on_task_written`, a task write hook).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import cast

from sqlalchemy import (
    ColumnElement,
    Table,
    case,
    delete,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard_api.db.dialect import dialect_of
from dashboard_api.db.engine import Database
from dashboard_api.db.models import ConversationTask, Task, TaskEvent, TaskOutputChunk
from dashboard_api.db.models.analytics import STATE_TABLE
from dashboard_api.services.analytics.layout import EPOCH, GRAINS, HIST_GRAINS
from dashboard_api.services.task_hooks import TaskHook, TaskSnapshot, TaskWrite
from dashboard_api.task_statuses import TERMINAL_STATUSES
from dashboard_api.timeutil import format_ts

# The cut-off is aligned to 4 hours, a multiple of the finest histogram block (1 hour;
# counters have 15-minute blocks): every rollup block after it holds only tasks that were
# kept, so an analytics window whose edges lie after the cut-off covers its partial blocks
# from raw rows that are all still there. It stayed on 4 hours when the 1-hour histogram
# grain came (migration 0020 built those rows from the tasks then left, so the hours of a
# database pruned before it have none): a prune's cut-off is where it was.
PRUNE_ALIGNMENT = 4 * 3600
assert PRUNE_ALIGNMENT % HIST_GRAINS[0] == 0
assert PRUNE_ALIGNMENT % GRAINS[0] == 0
PRUNE_BATCH = 1000
# Prunable tasks per step (see `_step_end`): what a task-list total may count from the
# table, over an index range, while a prune runs.
STEP_ROWS = 5000
# A task inserted with a creation time older than this (against the clock of the process
# writing it) takes the state row's lock and lowers `empty_before_s` if it is below it
# (`on_task_written`); a prune never raises `empty_before_s` past twice this before its
# own clock, so a task created "now" never needs to (as long as a task insert's
# transaction lasts less than an hour and the replicas' clocks agree within one).
RECENT_INSERTS = timedelta(hours=1)
_TERMINAL = sorted(TERMINAL_STATUSES)
_T: Table = Task.__table__  # type: ignore[assignment]
_STATE = STATE_TABLE
_MEMBERS: tuple[Table, ...] = cast(
    tuple[Table, ...],
    (TaskOutputChunk.__table__, TaskEvent.__table__, ConversationTask.__table__),
)


@dataclass
class PruneReport:
    """What one prune deleted (or, dry, would delete): tasks created before `cutoff`."""

    cutoff: datetime
    dry_run: bool = False
    tasks: int = 0
    chunks: int = 0
    events: int = 0
    batches: int = 0

    def add(self, other: PruneReport) -> None:
        self.tasks += other.tasks
        self.chunks += other.chunks
        self.events += other.events
        self.batches += other.batches

    def line(self) -> str:
        """One line for a person: what was deleted."""
        verb = "would delete" if self.dry_run else "deleted"
        return (
            f"{verb} {self.tasks} tasks, {self.chunks} output chunks and {self.events} "
            f"status events of terminal tasks created before {format_ts(self.cutoff)}"
        )


def aligned_cutoff(older_than: datetime) -> datetime:
    """`older_than` moved down to a `PRUNE_ALIGNMENT` boundary (epoch-aligned, UTC)."""
    seconds = (older_than - EPOCH) // timedelta(seconds=1)
    return EPOCH + timedelta(seconds=seconds - seconds % PRUNE_ALIGNMENT)


def retention_cutoff(now: datetime, days: float) -> datetime:
    """The aligned cut-off of a retention of `days` at `now`."""
    return aligned_cutoff(now - timedelta(days=days))


def _prunable(before: datetime) -> list[ColumnElement[bool]]:
    return [_T.c.status.in_(_TERMINAL), _T.c.created_at < before]


async def prune_once(
    db: Database,
    *,
    older_than: datetime,
    dry_run: bool = False,
    batch_size: int = PRUNE_BATCH,
    on_batch: Callable[[PruneReport], None] | None = None,
) -> PruneReport:
    """Delete every terminal task created before `older_than` (moved down to a
    `PRUNE_ALIGNMENT` boundary), with its output chunks and status events, in batches
    of `batch_size` tasks, each its own short transaction; `on_batch` hears each batch.
    `dry_run`: count what would be deleted, delete nothing."""
    cutoff = aligned_cutoff(older_than)
    report = PruneReport(cutoff=cutoff, dry_run=dry_run)
    if dry_run:
        async with db.read() as session:
            await _count_prunable(session, cutoff, report)
        return report
    since: datetime | None = None
    while True:
        async with db.read_statements() as session:
            where = _prunable(cutoff)
            if since is not None:
                # Deleted rows stay in the index until vacuumed: start past them.
                where.append(_T.c.created_at >= since)
            since = await session.scalar(select(func.min(_T.c.created_at)).where(*where))
        if since is None:
            return report
        step = await _step_end(db, since, cutoff)
        await _raise_pruned_before(db, step)
        while True:
            batch, last = await _delete_batch(db, since, step, batch_size, cutoff)
            if last is None:
                break
            since = last
            report.add(batch)
            if on_batch is not None:
                on_batch(batch)
        await _raise_empty_before(db, step)
        since = step


async def _step_end(db: Database, since: datetime, cutoff: datetime) -> datetime:
    """The end of the next step from `since`: the aligned boundary after about
    `STEP_ROWS` prunable tasks, at most `cutoff`. The list counts the rows of the step
    from the table while it is being deleted, so a step holds a bounded number."""
    async with db.read_statements() as session:
        far = await session.scalar(
            select(_T.c.created_at)
            .where(*_prunable(cutoff), _T.c.created_at >= since)
            .order_by(_T.c.created_at)
            .offset(STEP_ROWS)
            .limit(1)
        )
    if far is None:
        return cutoff
    return min(cutoff, aligned_cutoff(far) + timedelta(seconds=PRUNE_ALIGNMENT))


async def _count_prunable(session: AsyncSession, cutoff: datetime, report: PruneReport) -> None:
    victims = select(_T.c.task_id).where(*_prunable(cutoff)).scalar_subquery()
    counts = [select(func.count()).where(*_prunable(cutoff)).select_from(_T).scalar_subquery()]
    for table in _MEMBERS[:2]:
        counts.append(
            select(func.count())
            .select_from(table)
            .where(table.c.task_id.in_(victims))
            .scalar_subquery()
        )
    tasks, chunks, events = (await session.execute(select(*counts))).one()
    report.tasks, report.chunks, report.events = int(tasks), int(chunks), int(events)


async def _raise_pruned_before(db: Database, before: datetime) -> None:
    """Record that tasks created before `before` may be pruned (never lowered)."""
    seconds = (before - EPOCH) // timedelta(seconds=1)
    async with db.write() as session:
        await _ensure_state_row(session)
        column = _STATE.c.pruned_before_s
        await session.execute(
            update(_STATE)
            .where(_STATE.c.id == 1, or_(column.is_(None), column < seconds))
            .values(pruned_before_s=seconds)
        )


def _epoch_floor(at: datetime) -> int:
    return (at - EPOCH) // timedelta(seconds=1)


async def _raise_empty_before(db: Database, upto: datetime) -> None:
    """Raise `empty_before_s` towards `upto`: to the oldest task left before it (one the
    prune kept, or another replica has not deleted yet), else to `upto`; never past
    `2 * RECENT_INSERTS` before now (see `on_task_written`).

    The state row is locked first: an insert of an old task lowering it either committed
    before (the oldest task read after the lock sees it) or waits for this commit and
    lowers it after."""
    cap = datetime.now(UTC) - 2 * RECENT_INSERTS
    async with db.write() as session:
        await _ensure_state_row(session)
        column = _STATE.c.empty_before_s
        locked = dialect_of(session).lock_for_update(select(column).where(_STATE.c.id == 1))
        current = await session.scalar(locked)
        where = [_T.c.created_at < upto]
        if current is not None:
            # Rows before it are gone; their index entries may not be (until vacuum).
            where.append(_T.c.created_at >= EPOCH + timedelta(seconds=current))
        oldest = await session.scalar(select(func.min(_T.c.created_at)).where(*where))
        seconds = _epoch_floor(min(upto, cap, oldest or upto))
        if current is None or seconds > current:
            await session.execute(
                update(_STATE).where(_STATE.c.id == 1).values(empty_before_s=seconds)
            )


async def _lower_empty_before(session: AsyncSession, created: datetime) -> None:
    """`empty_before_s` at most `created`, in the caller's transaction (which inserts a
    task created then); the state row stays locked until it commits."""
    seconds = _epoch_floor(created)
    column = _STATE.c.empty_before_s
    stmt = dialect_of(session).insert(_STATE).values(id=1, rebuilds=0, prunes=0)
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=["id"],
            set_={column: case((column > seconds, seconds), else_=column)},
        )
    )


def _old_inserts(writes: Sequence[TaskWrite]) -> datetime | None:
    """The oldest creation time of the new tasks among `writes` created longer than
    `RECENT_INSERTS` ago (None: none)."""
    recent = datetime.now(UTC) - RECENT_INSERTS
    old = [w[1].created_at for w in writes if w[0] is None and w[1].created_at < recent]
    return min(old) if old else None


async def on_task_written(
    session: AsyncSession, before: TaskSnapshot | None, after: TaskSnapshot
) -> None:
    """A task write hook: a new task created before `empty_before_s` lowers it."""
    if before is None:
        await on_tasks_written(session, [(before, after)])


async def on_tasks_written(session: AsyncSession, writes: Sequence[TaskWrite]) -> None:
    oldest = _old_inserts(writes)
    if oldest is not None:
        await _lower_empty_before(session, oldest)


TASK_HOOK = TaskHook(on_task_written, on_tasks_written)


async def pruned_before(session: AsyncSession) -> datetime | None:
    """The instant before which terminal tasks may have been pruned (None: never)."""
    seconds = await session.scalar(select(_STATE.c.pruned_before_s).where(_STATE.c.id == 1))
    return None if seconds is None else EPOCH + timedelta(seconds=seconds)


async def _ensure_state_row(session: AsyncSession) -> None:
    stmt = dialect_of(session).insert(_STATE).values(id=1, rebuilds=0, prunes=0)
    await session.execute(stmt.on_conflict_do_nothing(index_elements=["id"]))


async def _delete_batch(
    db: Database, since: datetime, before: datetime, batch_size: int, cutoff: datetime
) -> tuple[PruneReport, datetime | None]:
    """One transaction: up to `batch_size` prunable tasks created in [since, before),
    locked (skipping those another transaction holds), deleted with what belongs to
    them; and the creation time of the last one (None: none found)."""
    report = PruneReport(cutoff=cutoff)
    async with db.write() as session:
        dialect = dialect_of(session)
        pick = dialect.lock_skip_locked(
            select(_T.c.task_id, _T.c.created_at)
            .where(*_prunable(before), _T.c.created_at >= since)
            .order_by(_T.c.created_at, _T.c.task_id)
            .limit(batch_size),
        )
        rows = (await session.execute(pick)).all()
        if not rows:
            return report, None
        params = {"ids": [r.task_id for r in rows]}
        # The members first, by the batch's ids (one array parameter on PostgreSQL: one
        # statement and plan whatever the batch size, nothing to render per id), then the
        # tasks. The status is checked again: only a terminal task is ever deleted.
        counts = []
        for table in _MEMBERS:
            in_batch = dialect.in_strings(table.c.task_id, "ids")
            result = await session.execute(delete(table).where(in_batch), params)
            counts.append(int(result.rowcount))  # type: ignore[attr-defined]
        in_batch = dialect.in_strings(_T.c.task_id, "ids")
        result = await session.execute(
            delete(_T).where(in_batch, _T.c.status.in_(_TERMINAL)), params
        )
        report.tasks = int(result.rowcount)  # type: ignore[attr-defined]
        report.chunks, report.events = counts[0], counts[1]
        await session.execute(
            update(_STATE).where(_STATE.c.id == 1).values(prunes=_STATE.c.prunes + 1)
        )
        report.batches = 1
    return report, rows[-1].created_at
