"""Task writes leave their rollup contributions in `analytics_pending`; folds move them.

With the background fold off, every reader must still be exact: list totals and the
deep-page locator add the pending rows to what they count, analytics reads fold first.
Folds racing each other and task writes leave exactly the rollups a rebuild computes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from dashboard_api.db.models import AnalyticsPending
from dashboard_api.services.analytics.fold import fold_pending
from dashboard_api.services.analytics.rebuild import rebuild_rollups
from dashboard_api.services.tasks import (
    ORDERINGS,
    TaskFilters,
    locate_by_rollups,
)
from dashboard_api.settings import Settings
from tests.analytics.brute import assert_rollups_equal_a_rebuild
from tests.support.env import Backend

Headers = Callable[[str], dict[str, str]]

T0 = datetime(2026, 3, 9, 6, 0, tzinfo=UTC)
# On and off 15-minute blocks, days apart: totals combine whole blocks and raw edges.
OFFSETS = (
    timedelta(0),
    timedelta(minutes=14, seconds=59),
    timedelta(minutes=15),
    timedelta(hours=5, minutes=3),
    timedelta(days=1, hours=3),
    timedelta(days=9),
    timedelta(days=-30),
)
AGENTS = ("coder", "triage")
SOURCES = ("github", "slack", "api")


@pytest.fixture
def settings(backend: Backend) -> Settings:
    # No background fold: what the readers see is decided by the test alone.
    return backend.settings(analytics_fold_interval_seconds=0)


async def pending_rows(app: FastAPI) -> int:
    async with app.state.ctx.db.read() as session:
        return int(await session.scalar(select(func.count()).select_from(AnalyticsPending)) or 0)


async def register_one(
    client: httpx.AsyncClient, auth: Headers, i: int, prefix: str
) -> dict[str, Any]:
    """Task number i of a fixed spread over agent types, sources and time blocks."""
    body = {
        "agent_type": AGENTS[i % 2],
        "source": SOURCES[i % 3],
        "input_message": f"{prefix}{i}",
        "created_at": (T0 + OFFSETS[i % len(OFFSETS)]).isoformat(),
    }
    r = await client.post("/api/tasks", json=body, headers=auth("agent"))
    assert r.status_code == 201, r.text
    return dict(r.json())


async def register(client: httpx.AsyncClient, auth: Headers, n: int) -> list[dict[str, Any]]:
    """n tasks through the API, then some moved (each move is two pending rows)."""
    tasks = [await register_one(client, auth, i, "t") for i in range(n)]
    for i, task in enumerate(tasks):
        if i % 3:
            r = await client.patch(
                f"/api/tasks/{task['task_id']}",
                json={"status": "running" if i % 3 == 1 else "failed"},
                headers=auth("agent"),
            )
            assert r.status_code == 200, r.text
    return tasks


FILTERS: list[dict[str, Any]] = [
    {},
    {"status": "failed"},
    {"status": "queued,running"},
    {"agent_type": "coder"},
    {"source": "slack,api", "status": "running"},
    {"created_after": (T0 + timedelta(minutes=1)).isoformat()},
    {
        "created_after": (T0 - timedelta(days=40)).isoformat(),
        "created_before": (T0 + timedelta(days=2)).isoformat(),
        "agent_type": "triage",
    },
]


async def check_lists(app: FastAPI, client: httpx.AsyncClient, auth: Headers) -> None:
    for params in FILTERS:
        r = await client.get("/api/tasks", params={**params, "per_page": 200}, headers=auth("user"))
        body = r.json()
        assert body["total"] == len(body["items"]), params
        for sort in ("created_at", "-created_at"):
            r = await client.get(
                "/api/tasks", params={**params, "per_page": 200, "sort": sort}, headers=auth("user")
            )
            expected = [t["task_id"] for t in r.json()["items"]]
            filters = TaskFilters(
                status=tuple(params["status"].split(",")) if "status" in params else (),
                agent_type=tuple(params["agent_type"].split(",")) if "agent_type" in params else (),
                source=tuple(params["source"].split(",")) if "source" in params else (),
                created_after=(
                    datetime.fromisoformat(params["created_after"])
                    if "created_after" in params
                    else None
                ),
                created_before=(
                    datetime.fromisoformat(params["created_before"])
                    if "created_before" in params
                    else None
                ),
            )
            async with app.state.ctx.db.read_statements() as session:
                for offset in range(len(expected) + 1):
                    answered, key = await locate_by_rollups(
                        session, filters, ORDERINGS[sort], offset
                    )
                    if not app.state.ctx.settings.database_url.startswith("postgresql"):
                        # SQLite walks its index instead (see rollup_seek).
                        assert (answered, key) == (False, None)
                        break
                    assert answered, (params, sort, offset)
                    if offset < len(expected):
                        assert key is not None, (params, offset)
                        assert key[1] == expected[offset], (params, offset)
                    else:
                        assert key is None


async def test_list_totals_and_deep_pages_count_pending_rows(
    app: FastAPI, client: httpx.AsyncClient, auth: Headers
) -> None:
    await register(client, auth, 24)
    assert await pending_rows(app) == 24 + 2 * 16
    await check_lists(app, client, auth)
    assert await fold_pending(app.state.ctx.db) == 24 + 2 * 16
    assert await pending_rows(app) == 0
    await check_lists(app, client, auth)


async def test_analytics_reads_fold_first(
    app: FastAPI, client: httpx.AsyncClient, auth: Headers
) -> None:
    await register(client, auth, 12)
    assert await pending_rows(app) > 0
    params = {
        "from": (T0 - timedelta(days=60)).isoformat(),
        "to": (T0 + timedelta(days=60)).isoformat(),
    }
    body = (await client.get("/api/analytics/summary", params=params, headers=auth("user"))).json()
    assert body["total_tasks"] == 12
    assert body["failed_tasks"] == 4
    assert body["running_tasks"] == 4
    assert await pending_rows(app) == 0
    metrics = (await client.get("/metrics")).text
    # 12 registrations, and 8 moves of two rows each (old contribution out, new one in)
    assert "dashboard_analytics_folded_rows_total 28.0" in metrics


async def test_racing_folds_and_writes_equal_a_rebuild(
    app: FastAPI, client: httpx.AsyncClient, auth: Headers
) -> None:
    """Registrations, moves and several folds at once: nothing lost, nothing doubled."""
    db = app.state.ctx.db

    async def writer(k: int) -> None:
        for i in range(k, 60, 4):
            task = await register_one(client, auth, i, "r")
            if i % 2:
                r = await client.patch(
                    f"/api/tasks/{task['task_id']}",
                    json={"status": "running"},
                    headers=auth("agent"),
                )
                assert r.status_code == 200, r.text

    async def folder() -> None:
        for _ in range(15):
            await fold_pending(db)
            await asyncio.sleep(0)

    await asyncio.gather(*(writer(k) for k in range(4)), folder(), folder())
    rebuilt = await assert_rollups_equal_a_rebuild(app)
    assert await pending_rows(app) == 0
    assert sum(r[6] for r in rebuilt if r[0] == 900 and r[2] == 2) == 60


async def test_rebuild_drops_the_pending_rows_it_counted(
    app: FastAPI, client: httpx.AsyncClient, auth: Headers
) -> None:
    await register(client, auth, 9)
    db = app.state.ctx.db
    async with db.write() as session:
        await rebuild_rollups(session)
    assert await pending_rows(app) == 0
    r = await client.get("/api/tasks", params={"status": "failed"}, headers=auth("user"))
    assert r.json()["total"] == 3
