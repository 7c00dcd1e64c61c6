"""The seed (a bulk load that bypasses the task-write hook) leaves exactly the rollups that
incremental maintenance would have built task by task: on top of tasks already there (it
rebuilds them) and into an empty database (it sums them while generating the tasks)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard_api.db.models import Task
from dashboard_api.db.models.analytics import AnalyticsHistogram, AnalyticsRollup
from dashboard_api.services.analytics.layout import COUNTERS
from dashboard_api.services.analytics.rebuild import rebuild_rollups, rollup_rows
from dashboard_api.services.analytics.rollups import task_deltas
from dashboard_api.services.pricing import PriceTable
from dashboard_api.services.seed import seed_tasks
from dashboard_api.services.seed_data import TASK_COLUMNS, generate
from dashboard_api.services.task_hooks import snapshot
from dashboard_api.settings import ModelPrice

Headers = Callable[[str], dict[str, str]]


def incremental(tasks: list[Task]) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The rollups that registering each task through the service would have left."""
    counters: dict[tuple[Any, ...], list[int]] = {}
    hist: dict[tuple[Any, ...], int] = {}
    width = len(COUNTERS)
    for task in tasks:
        rows, hrows = task_deltas(None, snapshot(task))
        for row in rows:
            acc = counters.setdefault(row[:-width], [0] * width)
            for i, v in enumerate(row[-width:]):
                acc[i] += v
        for *key, n in hrows:
            hist[tuple(key)] = hist.get(tuple(key), 0) + n
    return (
        sorted((*k, *v) for k, v in counters.items() if any(v)),
        sorted((*k, n) for k, n in hist.items() if n),
    )


async def test_seed_rollups_equal_incremental(
    app: FastAPI, client: httpx.AsyncClient, auth: Headers
) -> None:
    # A task registered through the API first: the seed must keep its rollups too.
    body = {"agent_type": "coder", "input_message": "x", "created_at": "2026-11-20T10:07:00Z"}
    r = await client.post("/api/tasks", json=body, headers=auth("agent"))
    assert r.status_code == 201, r.text
    db = app.state.ctx.db
    async with db.write() as session:
        now = datetime(2026, 11, 25, 12, 34, 56, 789000, tzinfo=UTC)
        prices = PriceTable(*app.state.ctx.settings.price_table())
        assert await seed_tasks(session, n=400, now=now, prices=prices, days=3, seed=7) == 400
    async with db.read() as session:
        tasks = list((await session.scalars(select(Task))).all())
        got = await rollup_rows(session)
    assert len(tasks) == 401
    want = incremental(tasks)
    for got_rows, want_rows in zip(got, want, strict=True):
        extra = sorted(set(got_rows) - set(want_rows))[:5]
        missing = sorted(set(want_rows) - set(got_rows))[:5]
        assert (extra, missing) == ([], []), f"extra={extra}\nmissing={missing}"


async def _stored(session: AsyncSession) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Every rollup row (with `changes`) and histogram row as stored, sorted."""
    rollups = await session.execute(select(*AnalyticsRollup.__table__.c))
    hist = await session.execute(select(*AnalyticsHistogram.__table__.c))
    return sorted(tuple(r) for r in rollups), sorted((*r[:-1], bytes(r[-1])) for r in hist)


@pytest.mark.parametrize(
    ("n", "days", "chunk"), [(1500, 400, 32768), (600, 1, 32768), (3000, 400, 97), (900, 1, 61)]
)
async def test_seed_into_an_empty_database_writes_the_rebuilt_rollups(
    app: FastAPI, n: int, days: int, chunk: int
) -> None:
    # No tasks and no rollups: the seed sums the rollups as it generates the tasks
    # (analytics.streamed). They must be the rows a rebuild writes, byte for byte, and
    # what registering each task would have left. 400 days cross every grain's blocks;
    # small chunks make blocks of time that span several chunks (carried over).
    db = app.state.ctx.db
    now = datetime(2026, 11, 25, 12, 34, 56, 789000, tzinfo=UTC)
    prices = PriceTable(*app.state.ctx.settings.price_table())
    async with db.write() as session:
        assert (
            await seed_tasks(session, n=n, now=now, prices=prices, days=days, seed=3, chunk=chunk)
            == n
        )
    async with db.read() as session:
        streamed = await _stored(session)
        logical = await rollup_rows(session)
        tasks = list((await session.scalars(select(Task))).all())
    assert logical == incremental(tasks)
    async with db.write() as session:
        await rebuild_rollups(session)
    async with db.read() as session:
        rebuilt = await _stored(session)
    assert len(streamed[0]) > 0
    assert len(streamed[1]) > 0
    assert streamed == rebuilt


async def test_seeded_tasks_come_in_order_of_creation() -> None:
    # The streamed rollups rely on it (a block is closed when a later one starts).
    prices = PriceTable({}, ModelPrice(input=Decimal("3.3"), output=Decimal(15)))
    now = datetime(2026, 11, 25, tzinfo=UTC)
    created = [
        row[TASK_COLUMNS.index("created_at")]
        for row, _ in generate(5000, now=now, days=30, prices=prices, seed=1)
    ]
    assert created == sorted(created)
    assert len(created) == 5000
