"""On SQLite, the rollup and histogram statements of a budget's spend and of the alerts'
trailing windows seek each block through the tables' key (series, grain, bucket, ...):
with the series beside an OR of blocks SQLite read every row of the series instead
(`Dialect.keyed_or`). Checked on the statements the service sends (captured), by their
plans; and the spend read from the rollups equals the tasks' sum on both backends."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from dashboard_api.db.models import Task
from dashboard_api.services.analytics.performance import performance
from dashboard_api.services.analytics.reads import summary
from dashboard_api.services.analytics.trailing import trailing_p95
from dashboard_api.services.analytics.window import AnalyticsFilters
from dashboard_api.services.budgets.spend import Scope, spend_micros
from dashboard_api.services.pricing import PriceTable
from dashboard_api.services.seed import seed_tasks
from tests.support.env import Backend
from tests.support.statements import sent

NOW = datetime(2026, 11, 25, 12, 34, 56, 789000, tzinfo=UTC)
KEYED = ("analytics_rollups", "analytics_histograms")


@contextmanager
def captured(app: FastAPI) -> Iterator[list[tuple[str, Any]]]:
    """The (statement, parameters) the app's engines run meanwhile."""
    with sent(app.state.ctx.db.engines) as seen:
        yield seen


async def _unkeyed_reads(app: FastAPI, statements: list[tuple[str, Any]]) -> list[str]:
    """The plan lines of `statements` that read a keyed table other than by (series,
    grain, ...): a scan, or a search on the series alone."""
    bad: list[str] = []
    checked = 0
    async with app.state.ctx.db.read() as session:
        conn = await session.connection()
        for statement, parameters in statements:
            if not any(table in statement for table in KEYED):
                continue
            checked += 1
            plan = await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
            for row in plan:
                line = str(row[-1])
                if any(f" {table}" in line for table in KEYED) and "grain=" not in line:
                    bad.append(line)
    assert checked, "no statement read the rollups or histograms"
    return bad


@pytest.mark.parametrize(
    "scope", [Scope(), Scope(agent_type="reviewer"), Scope(agent_type="triage", source="slack")]
)
async def test_spend_seeks_each_block(app: FastAPI, backend: Backend, scope: Scope) -> None:
    if backend.name != "sqlite":
        pytest.skip("SQLite's planner (PostgreSQL binds the blocks: unchanged)")
    start, end = datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC)
    with captured(app) as statements:
        async with app.state.ctx.db.read() as session:
            await spend_micros(session, scope, start, end)
    assert await _unkeyed_reads(app, statements) == []


async def test_trailing_p95_seeks_each_block(app: FastAPI, backend: Backend) -> None:
    if backend.name != "sqlite":
        pytest.skip("SQLite's planner (PostgreSQL binds the blocks: unchanged)")
    with captured(app) as statements:
        async with app.state.ctx.db.read() as session:
            await trailing_p95(
                session, now=NOW, minutes=[60, 1440, 10080], pairs=[("reviewer", "github")]
            )
    assert await _unkeyed_reads(app, statements) == []


async def test_spend_from_rollups_equals_the_tasks_sum(app: FastAPI) -> None:
    db = app.state.ctx.db
    prices = PriceTable(*app.state.ctx.settings.price_table())
    async with db.write() as session:
        await seed_tasks(session, n=3000, now=NOW, prices=prices, days=40, seed=5, chunk=500)
    start = datetime(2026, 10, 20, tzinfo=UTC)
    for scope in (Scope(), Scope(agent_type="reviewer"), Scope(source="slack")):
        for days in (1, 7, 30):
            end = start + timedelta(days=days)
            where = [Task.created_at >= start, Task.created_at < end]
            where += [getattr(Task, k) == v for k, v in scope.as_dict().items()]
            async with db.read() as session:
                spent = await spend_micros(session, scope, start, end)
                want = await session.scalar(
                    select(func.coalesce(func.sum(Task.cost_micros), 0)).where(*where)
                )
            assert spent == want, (scope, days)
            assert want > 0


async def _tasks_read_without_window(app: FastAPI, statements: list[tuple[str, Any]]) -> list[str]:
    """The plan lines of `statements` that read the tasks other than by a creation range:
    a scan, or a search on a filter's column alone (every task of an agent type)."""
    bad: list[str] = []
    async with app.state.ctx.db.read() as session:
        conn = await session.connection()
        for statement, parameters in statements:
            if " tasks" not in statement:
                continue
            plan = await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
            for row in plan:
                line = str(row[-1])
                if " tasks " in f"{line} " and "created_at>" not in line:
                    bad.append(line)
    return bad


@pytest.mark.parametrize("read", [summary, performance])
@pytest.mark.parametrize(
    "filters",
    [AnalyticsFilters(), AnalyticsFilters(agent_type=["reviewer"]),
     AnalyticsFilters(agent_type=["triage"], source=["slack", "github"])],
)  # fmt: skip
async def test_window_edges_seek_tasks_by_creation(
    app: FastAPI, backend: Backend, read: Any, filters: AnalyticsFilters
) -> None:
    """A window's raw edges read the tasks through a creation range, with the filters
    inside each range's term (`Dialect.keyed_or`): beside an OR of ranges, SQLite sought
    an agent type's tasks by the filter alone, every one of them."""
    if backend.name != "sqlite":
        pytest.skip("SQLite's planner (PostgreSQL seeks each range: unchanged)")
    start = NOW - timedelta(days=30, minutes=17)  # edges inside blocks: raw ranges
    with captured(app) as statements:
        async with app.state.ctx.db.read() as session:
            await read(session, start=start, end=NOW, filters=filters, now=NOW)
    assert any(" tasks" in s for s, _ in statements), "no statement read raw tasks"
    assert await _tasks_read_without_window(app, statements) == []
