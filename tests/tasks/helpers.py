"""Shared helpers of the task tests: a controllable clock and direct row loading."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import FastAPI
from sqlalchemy import delete

from dashboard_api.db.models import Task, TaskEvent, TaskOutputChunk

T0 = datetime(2026, 11, 1, 12, 0, 0, tzinfo=UTC)


@dataclass
class FakeClock:
    """A clock the test moves by hand."""

    at: datetime = T0

    def now(self) -> datetime:
        return self.at

    def advance(self, seconds: float) -> datetime:
        self.at += timedelta(seconds=seconds)
        return self.at


@dataclass
class Row:
    """The fields of a task that lists filter and sort on."""

    task_id: str
    created_at: datetime
    status: str = "completed"
    agent_type: str = "coder"
    source: str = "api"
    input_message: str = "do it"
    user_id: str | None = None
    conversation_id: str | None = None
    flow_id: str | None = None
    cost_micros: int = 0
    duration_us: int | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


async def clear_tasks(app: FastAPI) -> None:
    """Remove every task (between hypothesis examples, which share one database)."""
    from dashboard_api.services.analytics.rollups import rebuild_rollups

    async with app.state.ctx.db.write() as session:
        for model in (TaskOutputChunk, TaskEvent, Task):
            await session.execute(delete(model))
        await rebuild_rollups(session)


async def load_rows(app: FastAPI, rows: Sequence[Row]) -> None:
    """Insert tasks directly, with exactly the keys a list test needs (ties, nulls).

    Like any bulk load that bypasses the task service, it rebuilds the analytics rollups
    (list totals are counted from them).
    """
    from dashboard_api.services.analytics.rollups import rebuild_rollups

    async with app.state.ctx.db.write() as session:
        for r in rows:
            started = None if r.duration_us is None else r.created_at
            completed = (
                None
                if r.duration_us is None
                else r.created_at + timedelta(microseconds=r.duration_us)
            )
            session.add(
                Task(
                    task_id=r.task_id,
                    status=r.status,
                    agent_type=r.agent_type,
                    assigned_agent=None,
                    source=r.source,
                    input_message=r.input_message,
                    result=None,
                    error=r.error,
                    user_id=r.user_id,
                    conversation_id=r.conversation_id,
                    parent_task_id=None,
                    flow_id=r.flow_id,
                    model=None,
                    cost_micros=r.cost_micros,
                    cost_reported=True,
                    input_tokens=0,
                    output_tokens=0,
                    cache_read_tokens=0,
                    cache_write_tokens=0,
                    duration_us=r.duration_us,
                    created_at=r.created_at,
                    started_at=started,
                    completed_at=completed,
                    updated_at=r.created_at,
                    cancel_requested=False,
                    metadata_={},
                    output_seq=0,
                    output_bytes=0,
                    output_truncated=False,
                )
            )
        await session.flush()
        await rebuild_rollups(session)
