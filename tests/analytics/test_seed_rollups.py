"""The seed (a bulk load that bypasses the task-write hook) leaves exactly the rollups that
incremental maintenance would have built task by task, on top of tasks already there."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import select

from dashboard_api.db.models import Task
from dashboard_api.services.analytics.layout import COUNTERS
from dashboard_api.services.analytics.rebuild import rollup_rows
from dashboard_api.services.analytics.rollups import task_deltas
from dashboard_api.services.pricing import PriceTable
from dashboard_api.services.seed import seed_tasks
from dashboard_api.services.task_hooks import snapshot

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
