"""Task helpers: register, append and read over HTTP; load rows straight into the database."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy import delete

from dashboard_api.app import create_app
from dashboard_api.db.models import Task, TaskEvent, TaskOutputChunk
from dashboard_api.settings import Settings
from tests.support.tokens import Headers, make_token

MIB = 1024 * 1024


async def new_task(client: httpx.AsyncClient, auth: Headers, task_id: str = "o1") -> None:
    r = await client.post(
        "/api/tasks",
        json={"task_id": task_id, "agent_type": "coder", "input_message": "x"},
        headers=auth("agent"),
    )
    assert r.status_code == 201, r.text


async def append(
    client: httpx.AsyncClient, auth: Headers, body: dict[str, Any], task_id: str = "o1"
) -> httpx.Response:
    return await client.post(f"/api/tasks/{task_id}/output", json=body, headers=auth("agent"))


async def full_log(
    client: httpx.AsyncClient, auth: Headers, task_id: str = "o1", **params: Any
) -> dict[str, Any]:
    r = await client.get(f"/api/tasks/{task_id}/logs/full", params=params, headers=auth("user"))
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


@asynccontextmanager
async def running_app(
    settings: Settings,
) -> AsyncIterator[tuple[httpx.AsyncClient, Headers]]:
    application = create_app(settings)
    async with LifespanManager(application, startup_timeout=30, shutdown_timeout=30):
        tokens = {
            role: await make_token(application, role=role, user_id=role)
            for role in ("agent", "user")
        }
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client, lambda role: {"Authorization": f"Bearer {tokens[role]}"}


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
    from dashboard_api.services.analytics.rebuild import rebuild_rollups

    async with app.state.ctx.db.write() as session:
        for model in (TaskOutputChunk, TaskEvent, Task):
            await session.execute(delete(model))
        await rebuild_rollups(session)


async def load_rows(app: FastAPI, rows: Sequence[Row]) -> None:
    """Insert tasks directly, with exactly the keys a list test needs (ties, nulls).

    Like any bulk load that bypasses the task service, it rebuilds the analytics rollups
    (list totals are counted from them).
    """
    from dashboard_api.services.analytics.rebuild import rebuild_rollups

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
