"""On PostgreSQL the analytics reads run on connections of their own whose prepared
statements use generic plans (`Database.read_generic`): planned once per connection
instead of once per request. Other reads keep PostgreSQL's default. The answers are the
same whichever plan runs: each analytics figure read over generic plans, again and again
(a generic plan is only built from the sixth execution on in the default mode), equals
the same figure read over custom plans."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import text

from dashboard_api.schemas.analytics import Summary
from dashboard_api.services.analytics import reads
from dashboard_api.services.analytics.performance import performance
from dashboard_api.services.analytics.window import AnalyticsFilters
from dashboard_api.services.pricing import PriceTable
from dashboard_api.services.seed import seed_tasks
from tests.support.env import Backend
from tests.support.statements import sent

Headers = Callable[[str], dict[str, str]]

NOW = datetime(2026, 11, 25, 12, 34, 56, 789000, tzinfo=UTC)


@contextmanager
def generic_statements(app: FastAPI) -> Iterator[list[tuple[str, Any]]]:
    """The (statement, parameters) the generic-plan engine runs meanwhile (none on SQLite)."""
    with sent(app.state.ctx.db.engines[1:]) as seen:
        yield seen


async def test_plan_modes(app: FastAPI, backend: Backend) -> None:
    db = app.state.ctx.db
    if backend.name == "sqlite":
        assert len(db.engines) == 1  # read_generic is read_statements
        return
    assert len(db.engines) == 2
    async with db.read_generic() as session:
        assert await session.scalar(text("SHOW plan_cache_mode")) == "force_generic_plan"
        assert await session.scalar(text("SHOW jit")) == "off"
        # a generic plan's row estimate would start workers for a window edge's few tasks
        assert await session.scalar(text("SHOW max_parallel_workers_per_gather")) == "0"
    for read in (db.read, db.read_statements):
        async with read() as session:
            assert await session.scalar(text("SHOW plan_cache_mode")) == "auto"


async def test_analytics_requests_read_on_generic_plans(
    app: FastAPI, backend: Backend, client: httpx.AsyncClient, auth: Headers
) -> None:
    window = {"from": "2026-10-26T00:00:00Z", "to": "2026-11-25T00:00:00Z"}
    requests = [
        ("/api/analytics/summary", window),
        ("/api/analytics/summary", {**window, "agent_type": "reviewer"}),
        ("/api/analytics/costs/histogram", {**window, "period": "hour"}),
        ("/api/analytics/costs/histogram", {**window, "period": "day", "tz": "Asia/Kolkata"}),
        ("/api/analytics/performance", window),
    ]
    for path, params in requests:
        with generic_statements(app) as seen:
            r = await client.get(path, params=params, headers=auth("user"))
            assert r.status_code == 200, r.text
        assert bool(seen) is (backend.name != "sqlite"), path
    with generic_statements(app) as seen:
        r = await client.get("/api/tasks", headers=auth("user"))
        assert r.status_code == 200, r.text
    assert seen == []  # the list keeps the main pool's plans


async def test_generic_plans_answer_as_custom_plans(app: FastAPI) -> None:
    db = app.state.ctx.db
    prices = PriceTable(*app.state.ctx.settings.price_table())
    async with db.write() as session:
        await seed_tasks(session, n=3000, now=NOW, prices=prices, days=40, seed=7, chunk=500)
    cases = [
        (NOW - timedelta(days=days, minutes=minutes), NOW - timedelta(minutes=minutes), filters)
        for days in (1, 7, 30)
        for minutes in (0, 7, 61)
        for filters in (
            AnalyticsFilters(),
            AnalyticsFilters(agent_type=("reviewer",)),
            AnalyticsFilters(source=("slack",), failure_reason=("agent",)),
        )
    ]

    async def figures(session: Any, start: datetime, end: datetime, f: AnalyticsFilters) -> Any:
        summary: Summary = await reads.summary(session, start=start, end=end, filters=f, now=NOW)
        histogram = await reads.histogram(
            session,
            start=start,
            end=end,
            period="hour",
            tz_name="UTC",
            filters=f,
            max_buckets=2000,
            now=NOW,
        )
        perf = await performance(session, start=start, end=end, filters=f, now=NOW)
        return summary.model_dump(), histogram.json(), perf.model_dump()

    # Twice each: the second time reuses the plans the first cached on the connection.
    counted = 0
    for _ in range(2):
        for start, end, f in cases:
            async with db.read_generic() as session:
                generic = await figures(session, start, end, f)
            async with db.read_statements() as session:
                custom = await figures(session, start, end, f)
            assert generic == custom, (start, end, f)
            counted += custom[0]["total_tasks"] > 0 and custom[0]["failed_tasks"] > 0
    assert counted > len(cases)  # most windows hold tasks, failed ones among them
