"""Spans kept until their invocation is whole, and the tasks stored through the tasks
service's ordinary paths (`register_task`, `append_output`, `update_task`), so that the
usual `task_status` / `task_output` events go out and the analytics rollups follow.

Exactly once, whatever the retries, the order of arrival and the number of replicas:
one transaction per request takes a lock per trace (PostgreSQL advisory locks, in key
order; SQLite writes are serialized already), inserts the spans keyed by their own ids
(a span already stored is not new, and changes nothing), and plans from all the stored
spans of each trace that gained one. An invocation whose root has come gets its task
then, once: the root's row records the task. Spans of it that come later (tokens of a
late child) update the task's figures; their content is not appended, the task being
finished by then.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, cast

import orjson
from sqlalchemy import Table, bindparam, delete, select, update

from dashboard_api.db.dialect import dialect_of
from dashboard_api.db.engine import Database
from dashboard_api.db.models.otlp import OtlpSpan
from dashboard_api.errors import NotFound
from dashboard_api.otlp.mapping import SOURCE, TaskPlan, plan_task, subtrees
from dashboard_api.otlp.spans import SpanFacts
from dashboard_api.schemas.tasks import MAX_COUNT, TaskCreate, TaskUpdate
from dashboard_api.services import tasks
from dashboard_api.services.pricing import PriceTable

_S = cast(Table, OtlpSpan.__table__)
# The largest cost a task takes (TaskUpdate.cost_usd); a reported sum past it is capped.
MAX_COST_USD = Decimal(10**9)
# The advisory-lock class of trace locks (the two-key form: a key space of its own).
_LOCK_CLASS = 0x07E1


@dataclass(frozen=True, slots=True)
class OutputLimits:
    cap_bytes: int  # a task's log (setting output_cap_bytes)


@dataclass(slots=True)
class Stored:
    """What one request changed."""

    new_spans: int = 0
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)


def _ts(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, UTC)


async def store_spans(
    db: Database,
    spans: Sequence[SpanFacts],
    *,
    now: datetime,
    prices: PriceTable,
    output: OutputLimits,
) -> Stored:
    """Store the spans of one request and the tasks they complete, in one transaction."""
    result = Stored()
    unique = {(s.trace_id, s.span_id): s for s in reversed(spans)}  # the first of repeats
    if not unique:
        return result
    batch = secrets.randbits(62)
    async with db.write() as session:
        dialect = dialect_of(session)
        # Serializes the requests that carry spans of the same traces (PostgreSQL; SQLite
        # writes are serialized already).
        await dialect.lock_keys(session, _LOCK_CLASS, [int(t[:8], 16) - 2**31 for t, _ in unique])
        rows = [
            {"trace_id": t, "span_id": s, "facts": orjson.dumps(f.to_doc()).decode()}
            for (t, s), f in unique.items()
        ]
        inserted = await dialect.insert_missing_returning(
            session, _S, ("trace_id", "span_id"), rows, {"batch": batch, "received_at": now}
        )
        new_keys = {(t, s) for t, s in inserted}
        result.new_spans = len(new_keys)
        if not new_keys:
            return result
        touched = sorted({t for t, _ in new_keys})
        known: dict[str, list[SpanFacts]] = {t: [] for t in touched}
        has_task: dict[tuple[str, str], str] = {}
        for row in await session.execute(_LOAD, {"traces": touched, "batch": batch}):
            known[row.trace_id].append(SpanFacts.from_doc(orjson.loads(row.facts)))
            if row.task_id is not None:
                has_task[(row.trace_id, row.span_id)] = row.task_id
        for key in new_keys:
            known[key[0]].append(unique[key])
        marks: list[dict[str, str]] = []
        finished: list[tasks.FinishedTask] = []
        for trace_id in touched:
            for root, tree in subtrees(known[trace_id]):
                fresh = [s for s in tree if (s.trace_id, s.span_id) in new_keys]
                if not fresh:
                    continue
                plan = plan_task(root, tree)
                if plan is None:
                    continue
                if (root.trace_id, root.span_id) in has_task:
                    if await _update(session, plan, now=now, prices=prices):
                        result.updated.append(plan.task_id)
                else:
                    finished.append(task_record(plan))
                    marks.append({"t": root.trace_id, "s": root.span_id, "task_id": plan.task_id})
        if finished:
            recorded = await tasks.record_finished_tasks(
                session, records=finished, prices=prices, cap_bytes=output.cap_bytes
            )
            result.created += [t.task_id for t in recorded]
        if marks:
            # A root whose task existed already (its spans were pruned, then sent again)
            # is marked too: the task is not made twice.
            await session.execute(_MARK_ROOT, marks)
    return result


_LOAD = select(_S.c.trace_id, _S.c.span_id, _S.c.task_id, _S.c.facts).where(
    _S.c.trace_id.in_(bindparam("traces", expanding=True)), _S.c.batch != bindparam("batch")
)
_MARK_ROOT = (
    update(_S)
    .where(_S.c.trace_id == bindparam("t"), _S.c.span_id == bindparam("s"))
    .values(task_id=bindparam("task_id"))
)


def task_record(plan: TaskPlan) -> tasks.FinishedTask:
    """A newly whole invocation's task: registered running at the root's start, with the
    subtree's content as output, ended at the root's end with the plan's figures."""
    root = plan.root
    body = TaskCreate(
        task_id=plan.task_id,
        agent_type=plan.agent_type,
        input_message=plan.input_message,
        source=SOURCE,
        status="running",
        assigned_agent=plan.assigned_agent,
        model=plan.model,
        metadata=plan.metadata,
    )
    return tasks.FinishedTask(
        body=body,
        started_at=_ts(root.start_ns),
        completed_at=_ts(root.end_ns),
        final=task_figures(plan, final=True),
        chunks=plan.chunks(),
    )


async def _update(session: Any, plan: TaskPlan, *, now: datetime, prices: PriceTable) -> bool:
    """New spans of an invocation whose task exists: its figures, recomputed from all.
    False when the task is gone (deleted since): the spans are kept, nothing else."""
    try:
        await tasks.update_task(
            session,
            task_id=plan.task_id,
            body=task_figures(plan, final=False),
            now=now,
            prices=prices,
        )
    except NotFound:
        return False
    return True


def task_figures(plan: TaskPlan, *, final: bool) -> TaskUpdate:
    values: dict[str, Any] = {
        "model": plan.model,
        # Token sums over a subtree can pass what a task takes (reported values are only
        # bounded per span): capped, like the cost below.
        "input_tokens": min(plan.input_tokens, MAX_COUNT),
        "output_tokens": min(plan.output_tokens, MAX_COUNT),
        "cache_read_tokens": min(plan.cache_read_tokens, MAX_COUNT),
        "cache_write_tokens": min(plan.cache_write_tokens, MAX_COUNT),
    }
    if plan.result is not None:
        values["result"] = plan.result
    if plan.cost_usd is not None:
        values["cost_usd"] = float(min(plan.cost_usd, MAX_COST_USD))
    if final:
        values["status"] = plan.status
        if plan.error is not None:
            values["error"] = plan.error
    if values["model"] is None:
        del values["model"]
    return TaskUpdate(**values)


async def prune_spans(db: Database, *, now: datetime, retention_seconds: float) -> int:
    """Delete the spans received more than the retention ago (the `otlp-prune` job, on one
    replica at a time); how many went. A span sent again after that is new again: its
    invocation's task is not made twice (the root's task exists), but a late child of a
    pruned invocation no longer joins it."""
    cutoff = now - timedelta(seconds=retention_seconds)
    async with db.write() as session:
        done = await session.execute(delete(_S).where(_S.c.received_at < cutoff))
    return int(getattr(done, "rowcount", 0) or 0)
