"""Migration 0020 builds the 1-hour histogram rows in SQL: after it (and the fold of what
was pending when it ran), the histograms are exactly what a rebuild computes, on both
backends; its downgrade removes them and leaves every coarser row as it was."""

from __future__ import annotations

import dataclasses
import random
from datetime import timedelta
from typing import Any

from alembic import command
from sqlalchemy import func, select

from dashboard_api.db.engine import Database
from dashboard_api.db.migrate import alembic_config
from dashboard_api.db.models import Task
from dashboard_api.db.models.analytics import AnalyticsHistogram
from dashboard_api.services.analytics.fold import fold_pending
from dashboard_api.services.analytics.layout import HIST_GRAINS
from dashboard_api.services.analytics.rebuild import rebuild_rollups, rollup_rows
from dashboard_api.services.analytics.rollups import apply_task_write
from dashboard_api.services.task_hooks import snapshot
from tests.analytics.conftest import in_thread
from tests.analytics.test_failure_migration import _task

BEFORE = "0019_retention_empty_before"
HOUR = 3600


async def _state(db: Database) -> tuple[list[Any], list[Any], int]:
    async with db.read() as session:
        rows, hrows = await rollup_rows(session)
        hourly = await session.scalar(
            select(func.count())
            .select_from(AnalyticsHistogram)
            .where(AnalyticsHistogram.grain == HOUR)
        )
    return rows, hrows, int(hourly or 0)


async def test_migration_0020_builds_what_a_rebuild_computes(empty_url: str) -> None:
    assert HIST_GRAINS[0] == HOUR
    cfg = alembic_config(empty_url)
    in_thread(command.upgrade, cfg, "heads")
    rng = random.Random(20)
    db = Database(empty_url)
    try:
        tasks = [_task(rng, i) for i in range(600)]
        async with db.write() as session:
            session.add_all(tasks)
            await session.flush()
            await rebuild_rollups(session)
        rebuilt, rebuilt_hist, hourly = await _state(db)
        assert hourly > 0
        # Writes recorded in analytics_pending and not folded when the migration runs:
        # new tasks, and tasks whose duration and time to first output changed (a
        # contribution moved between bins, from one hour to the same hour).
        async with db.write() as session:
            for i in range(600, 640):
                task = _task(rng, i)
                session.add(task)
                await session.flush()
                await apply_task_write(session, None, snapshot(task))
            for task in rng.sample(tasks, 60):
                row = await session.get(Task, task.task_id)
                assert row is not None
                before = snapshot(row)
                row.duration_us = rng.randint(0, 10**9)
                if row.started_at is not None:
                    later = timedelta(microseconds=rng.randint(0, 10**6))
                    row.first_output_at = row.started_at + later
                await session.flush()
                after = snapshot(row)
                assert dataclasses.astuple(before) != dataclasses.astuple(after)
                await apply_task_write(session, before, after)
    finally:
        await db.dispose()

    in_thread(command.downgrade, cfg, BEFORE)
    db = Database(empty_url)
    try:
        rows, hrows, hourly = await _state(db)
        assert hourly == 0
        assert rows == rebuilt
        assert hrows == [r for r in rebuilt_hist if r[0] != HOUR]
    finally:
        await db.dispose()

    in_thread(command.upgrade, cfg, "heads")
    db = Database(empty_url)
    try:
        assert await fold_pending(db) > 0
        rows, hrows, _ = await _state(db)
        async with db.write() as session:
            await rebuild_rollups(session)
        expected_rows, expected_hist, _ = await _state(db)
        assert any(r[0] == HOUR for r in expected_hist)
        assert rows == expected_rows
        assert hrows == expected_hist
    finally:
        await db.dispose()
