"""Migration 0017 backfills the failure-reason series from the tasks: after it, the rollups
are exactly what a rebuild computes, on both backends, and its downgrade removes them."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

from alembic import command
from sqlalchemy import func, select

from dashboard_api.db.engine import Database
from dashboard_api.db.migrate import alembic_config
from dashboard_api.db.models import Task
from dashboard_api.db.models.analytics import AnalyticsHistogram, AnalyticsRollup
from dashboard_api.services.analytics.layout import FAILURE_MARGINAL_SERIES, FAILURE_SERIES
from dashboard_api.services.analytics.rebuild import rebuild_rollups, rollup_rows
from tests.analytics.conftest import in_thread

BEFORE = "0016_leases"
BASE = datetime(2026, 9, 1, tzinfo=UTC)
_FAILURE_SERIES = [*FAILURE_SERIES.values(), *FAILURE_MARGINAL_SERIES.values()]


def _task(rng: random.Random, i: int) -> Task:
    status = rng.choice(("queued", "running", "completed", "failed", "failed", "cancelled"))
    created = BASE + timedelta(
        seconds=rng.randint(0, 40 * 86400), microseconds=rng.randint(0, 999_999)
    )
    ended = status in ("completed", "failed", "cancelled")
    started = created + timedelta(seconds=rng.randint(0, 60)) if status != "queued" else None
    duration = rng.randint(0, 10**9) if ended and started is not None else None
    completed = (
        None if duration is None or started is None else started + timedelta(microseconds=duration)
    )
    first_output = (
        started + timedelta(microseconds=rng.randint(0, 10**7))
        if started is not None and rng.random() < 0.7
        else None
    )
    return Task(
        task_id=f"m-{i}",
        status=status,
        agent_type=rng.choice(("coder", "reviewer")),
        assigned_agent=None,
        source=rng.choice(("api", "github")),
        input_message="x",
        result=None,
        error=None,
        failure_reason=rng.choice(("lease_expired", "agent")) if status == "failed" else None,
        user_id=None,
        conversation_id=None,
        parent_task_id=None,
        flow_id=None,
        model=rng.choice((None, "gpt-5", "claude-sonnet-4")),
        cost_micros=rng.randint(0, 10**7),
        cost_reported=True,
        input_tokens=rng.randint(0, 10**5),
        output_tokens=rng.randint(0, 10**5),
        cache_read_tokens=rng.randint(0, 10**4),
        cache_write_tokens=rng.randint(0, 10**4),
        duration_us=duration,
        created_at=created,
        started_at=started,
        first_output_at=first_output,
        completed_at=completed,
        updated_at=created,
        cancel_requested=False,
        metadata_={},
        output_seq=0,
        output_bytes=0,
        output_truncated=False,
    )


async def _rows(url: str) -> tuple[list[Any], list[Any], int]:
    db = Database(url)
    try:
        async with db.read() as session:
            rows, hrows = await rollup_rows(session)
            failure_rows = await session.scalar(
                select(func.count())
                .select_from(AnalyticsRollup)
                .where(AnalyticsRollup.series.in_(_FAILURE_SERIES))
            )
            failure_rows = int(failure_rows or 0) + int(
                await session.scalar(
                    select(func.count())
                    .select_from(AnalyticsHistogram)
                    .where(AnalyticsHistogram.series.in_(_FAILURE_SERIES))
                )
                or 0
            )
    finally:
        await db.dispose()
    return rows, hrows, failure_rows


async def test_migration_0017_backfills_what_a_rebuild_computes(empty_url: str) -> None:
    cfg = alembic_config(empty_url)
    in_thread(command.upgrade, cfg, "heads")
    rng = random.Random(17)
    db = Database(empty_url)
    try:
        async with db.write() as session:
            session.add_all(_task(rng, i) for i in range(600))
            await session.flush()
            await rebuild_rollups(session)
    finally:
        await db.dispose()
    rebuilt, rebuilt_hist, failure_rows = await _rows(empty_url)
    assert failure_rows > 0

    in_thread(command.downgrade, cfg, BEFORE)
    _, _, left = await _rows(empty_url)
    assert left == 0
    in_thread(command.upgrade, cfg, "heads")
    rows, hrows, _ = await _rows(empty_url)
    assert rows == rebuilt
    assert hrows == rebuilt_hist
