"""Spans kept until their invocation is whole, and the tasks stored through the tasks
service's batch paths (`record_finished_tasks`, `update_recorded_tasks`: the state
machine, price table and task-write hooks of `register_task`, `append_output` and
`update_task`), so that the usual `task_status` / `task_output` events go out and the
analytics rollups follow.

Exactly once, whatever the retries, the order of arrival and the number of replicas:
one transaction per request takes a lock per trace (PostgreSQL advisory locks, in key
order; SQLite writes are serialized already), reads the spans of those traces stored so
far (a span already stored is not new, and changes nothing), and plans each trace that
gained a span from all its spans. An invocation whose root has come gets its task then,
once: the root's row records the task (written with the new spans, or set on a root
stored before). Spans of it that come later (tokens of a late child) update the task's
figures; their content is not appended, the task being finished by then.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, cast

import orjson
from sqlalchemy import Table, delete, select

from dashboard_api.db.dialect import Dialect, dialect_of
from dashboard_api.db.engine import Database
from dashboard_api.db.models.otlp import OtlpSpan
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
    traces = sorted({t for t, _ in unique})
    async with db.write() as session:
        dialect = dialect_of(session)
        # Serializes the requests that carry spans of the same traces (PostgreSQL; SQLite
        # writes are serialized already): what is read next stays true until commit.
        await dialect.lock_keys(session, _LOCK_CLASS, [int(t[:8], 16) - 2**31 for t in traces])
        earlier: dict[str, list[Any]] = {}
        for row in await session.execute(_load(dialect), {"traces": traces}):
            earlier.setdefault(row.trace_id, []).append(row)
        stored = {(row.trace_id, row.span_id) for rows in earlier.values() for row in rows}
        new = {key: f for key, f in unique.items() if key not in stored}
        result.new_spans = len(new)
        if not new:
            return result
        work = _plan(new, earlier)
        task_of_root = {root: plan.task_id for root, plan in work.creates}
        await dialect.insert_rows(
            session,
            _S,
            _SPAN_COLUMNS,
            [(t, s, task_of_root.get((t, s)), _stored_form(f)) for (t, s), f in new.items()],
            {"batch": secrets.randbits(62), "received_at": now},
        )
        # Roots stored by an earlier request, whose invocation became a task only now (or
        # again: a task that exists already, its spans pruned and sent again, is not
        # made twice).
        marks = [(t, s, task_id) for (t, s), task_id in task_of_root.items() if (t, s) in stored]
        if marks:
            await dialect.update_by_keys(session, _S, ("trace_id", "span_id"), ("task_id",), marks)
        if work.creates:
            recorded = await tasks.record_finished_tasks(
                session,
                records=[task_record(plan, validate=False) for _, plan in work.creates],
                prices=prices,
                cap_bytes=output.cap_bytes,
            )
            result.created += [t.task_id for t in recorded]
        if work.updates:
            result.updated += await tasks.update_recorded_tasks(
                session,
                updates=[
                    (plan.task_id, task_figures(plan, final=False, validate=False))
                    for plan in work.updates
                ],
                now=now,
                prices=prices,
            )
    return result


@dataclass(slots=True)
class _Batch:
    """The tasks a request's new spans make (keyed by their root) or change."""

    creates: list[tuple[tuple[str, str], TaskPlan]] = field(default_factory=list)
    updates: list[TaskPlan] = field(default_factory=list)


def _plan(new: dict[tuple[str, str], SpanFacts], earlier: dict[str, list[Any]]) -> _Batch:
    """Re-plan every trace that gained a span, from all its spans: an invocation whose
    root has a task (recorded on the root's row) is an update, any other a new task."""
    batch = _Batch()
    known: dict[str, list[SpanFacts]] = {}
    has_task: set[tuple[str, str]] = set()
    for trace_id in sorted({t for t, _ in new}):
        spans = known[trace_id] = []
        for row in earlier.get(trace_id, ()):
            spans.append(SpanFacts.from_doc(orjson.loads(row.facts)))
            if row.task_id is not None:
                has_task.add((row.trace_id, row.span_id))
    for key, f in new.items():
        known[key[0]].append(f)
    for spans in known.values():
        for root, tree in subtrees(spans):
            if not any((s.trace_id, s.span_id) in new for s in tree):
                continue
            plan = plan_task(root, tree)
            if plan is None:
                continue
            key = (root.trace_id, root.span_id)
            if key in has_task:
                batch.updates.append(plan)
            else:
                batch.creates.append((key, plan))
    return batch


def _stored_form(facts: SpanFacts) -> str:
    return orjson.dumps(facts.to_doc()).decode()


_SPAN_COLUMNS = ("trace_id", "span_id", "task_id", "facts")
_LOADS: dict[Dialect, Any] = {}


def _load(dialect: Dialect) -> Any:
    """The stored spans of the traces bound to `traces` (built once per dialect)."""
    stmt = _LOADS.get(dialect)
    if stmt is None:
        stmt = _LOADS[dialect] = select(
            _S.c.trace_id, _S.c.span_id, _S.c.task_id, _S.c.facts
        ).where(dialect.in_strings(_S.c.trace_id, "traces"))
    return stmt


def task_record(plan: TaskPlan, *, validate: bool = True) -> tasks.FinishedTask:
    """A newly whole invocation's task: registered running at the root's start, with the
    subtree's content as output, ended at the root's end with the plan's figures.

    `validate=False` builds the bodies without validating them: what a plan holds is
    valid by construction (cleaned and capped when its spans were read;
    tests/otlp/test_mapping.py checks that any plan validates)."""
    root = plan.root
    make = TaskCreate if validate else TaskCreate.model_construct
    body = make(
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
        final=task_figures(plan, final=True, validate=validate),
        chunks=plan.chunks(),
    )


def task_figures(plan: TaskPlan, *, final: bool, validate: bool = True) -> TaskUpdate:
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
    return TaskUpdate(**values) if validate else TaskUpdate.model_construct(**values)


async def prune_spans(db: Database, *, now: datetime, retention_seconds: float) -> int:
    """Delete the spans received more than the retention ago (the `otlp-prune` job, on one
    replica at a time); how many went. A span sent again after that is new again: its
    invocation's task is not made twice (the root's task exists), but a late child of a
    pruned invocation no longer joins it."""
    cutoff = now - timedelta(seconds=retention_seconds)
    async with db.write() as session:
        done = await session.execute(delete(_S).where(_S.c.received_at < cutoff))
    return int(getattr(done, "rowcount", 0) or 0)
