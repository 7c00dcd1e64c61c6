"""A batch of task writes (`task_hooks.tasks_written`, as OTLP ingestion records its tasks)
leaves exactly what the same writes one by one (`task_written`) leave: the same analytics
contributions, and the same state of a `hold` budget whose spend they change."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import httpx
from fastapi import FastAPI
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard_api.db.models.analytics import AnalyticsPending
from dashboard_api.db.models.guards import Budget
from dashboard_api.services.task_hooks import TaskSnapshot, TaskWrite, task_written, tasks_written
from tests.guards.helpers import put_budget
from tests.support.clock import FakeClock

Headers = Callable[[str], dict[str, str]]
Hooks = Callable[[AsyncSession, list[TaskWrite]], Awaitable[None]]


class _Undo(Exception):
    """Rolls a measured transaction back."""


version_st = st.fixed_dictionaries(
    {
        "status": st.sampled_from(("running", "completed", "failed")),
        "agent_type": st.sampled_from(("coder", "triage")),
        "model": st.sampled_from((None, "claude-sonnet-4", "gpt-5")),
        # Around the clock's day: some writes fall in the previous or the next period.
        "created_h": st.integers(-30, 30),
        "cost_micros": st.sampled_from((0, 400_000, 1_500_000, 7_000_000)),
        "input_tokens": st.integers(0, 10_000),
        "duration_us": st.one_of(st.none(), st.integers(0, 10**9)),
        "failure_reason": st.sampled_from(("lease_expired", "agent")),
    }
)
writes_st = st.lists(
    st.tuples(st.one_of(st.none(), version_st), version_st), min_size=1, max_size=8
)


def _snapshot(task_id: str, clock: FakeClock, v: dict[str, Any]) -> TaskSnapshot:
    created = clock.now() + timedelta(hours=v["created_h"])
    ended = v["status"] != "running"
    return TaskSnapshot(
        task_id=task_id,
        status=v["status"],
        agent_type=v["agent_type"],
        source="opentelemetry",
        model=v["model"],
        user_id=None,
        conversation_id=None,
        parent_task_id=None,
        flow_id=None,
        created_at=created,
        started_at=created,
        completed_at=created + timedelta(seconds=5) if ended else None,
        first_output_at=None,
        duration_us=v["duration_us"] if ended else None,
        cost_micros=v["cost_micros"],
        input_tokens=v["input_tokens"],
        output_tokens=0,
        cache_read_tokens=0,
        cache_write_tokens=0,
        result=None,
        error=None,
        failure_reason=v["failure_reason"] if v["status"] == "failed" else None,
    )


async def _outcome(app: FastAPI, writes: list[TaskWrite], run: Hooks) -> tuple[Any, ...]:
    """The pending contributions and the budget's state after `run`, rolled back."""
    out: tuple[Any, ...] = ()
    try:
        async with app.state.ctx.db.write() as session:
            await run(session, writes)
            pending = await session.execute(
                select(*(c for c in AnalyticsPending.__table__.c if c.name != "id"))
            )
            budget = await session.execute(
                select(Budget.state, Budget.state_period_start, Budget.held_until)
            )
            out = (sorted((tuple(r) for r in pending), key=repr), budget.all())
            raise _Undo
    except _Undo:
        pass
    return out


async def _one_by_one(session: AsyncSession, writes: list[TaskWrite]) -> None:
    for before, after in writes:
        await task_written(session, before, after)


@given(specs=writes_st, limit=st.sampled_from((0.5, 2.0, 9.0)))
async def test_a_batch_of_writes_leaves_what_the_writes_one_by_one_leave(
    app: FastAPI,
    client: httpx.AsyncClient,
    auth: Headers,
    clock: FakeClock,
    specs: list[tuple[dict[str, Any] | None, dict[str, Any]]],
    limit: float,
) -> None:
    await put_budget(
        client,
        auth("admin"),
        "coder-hold",
        scope={"agent_type": "coder"},
        limit_usd=limit,
        action="hold",
    )
    # A task keeps its agent type and creation time from one version to the next.
    same = ("agent_type", "created_h")
    writes: list[TaskWrite] = [
        (
            None
            if before is None
            else _snapshot(f"t-{i}", clock, {**before, **{k: after[k] for k in same}}),
            _snapshot(f"t-{i}", clock, after),
        )
        for i, (before, after) in enumerate(specs)
    ]
    batch = await _outcome(app, writes, tasks_written)
    single = await _outcome(app, writes, _one_by_one)
    assert batch == single
    # Every new task contributes a row (an update, two or none).
    assert len(batch[0]) >= sum(before is None for before, _ in writes)
