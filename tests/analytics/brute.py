"""Brute-force analytics over the raw task rows, written from docs/api.md §5 alone."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from fastapi import FastAPI
from sqlalchemy import select

from dashboard_api.db.models import Task
from dashboard_api.services.analytics.fold import fold_pending
from dashboard_api.services.analytics.rebuild import rebuild_rollups, rollup_rows


async def assert_rollups_equal_a_rebuild(app: FastAPI) -> list[tuple[Any, ...]]:
    """Fold what is pending, then check that the incrementally kept rollups equal the
    ones a rebuild computes from the raw tasks; the rebuilt counter rows."""
    db = app.state.ctx.db
    await fold_pending(db)
    async with db.read() as session:
        incremental = await rollup_rows(session)
    async with db.write() as session:
        await rebuild_rollups(session)
    async with db.read() as session:
        rebuilt = await rollup_rows(session)
    for got_rows, want_rows in zip(incremental, rebuilt, strict=True):
        extra = sorted(set(got_rows) - set(want_rows))[:5]
        missing = sorted(set(want_rows) - set(got_rows))[:5]
        assert (extra, missing) == ([], []), f"extra={extra}\nmissing={missing}"
    return rebuilt[0]


async def load_tasks(app: FastAPI) -> list[Any]:
    async with app.state.ctx.db.read() as session:
        return list((await session.scalars(select(Task))).all())


def in_window(
    tasks: Sequence[Any],
    start: datetime,
    end: datetime,
    agent_types: Sequence[str],
    sources: Sequence[str],
    failure_reasons: Sequence[str] = (),
) -> list[Any]:
    return [
        t
        for t in tasks
        if start <= t.created_at < end
        and (not agent_types or t.agent_type in agent_types)
        and (not sources or t.source in sources)
        and (not failure_reasons or t.failure_reason in failure_reasons)
    ]


def usd(micros: int) -> float:
    return float(Decimal(micros) / 1_000_000)


def nearest_rank(values: Sequence[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p * len(ordered))) - 1]


def first_output_seconds(t: Any) -> float | None:
    if t.first_output_at is None or t.started_at is None:
        return None
    return float(max(0.0, (t.first_output_at - t.started_at) / timedelta(microseconds=1)) / 1e6)


def summary(tasks: Sequence[Any], start: datetime, end: datetime) -> dict[str, Any]:
    n = len(tasks)
    by = {
        s: sum(1 for t in tasks if t.status == s)
        for s in ("queued", "running", "completed", "failed", "cancelled")
    }
    cost = sum(t.cost_micros for t in tasks)
    durations = [t.duration_us for t in tasks if t.duration_us is not None]
    done = by["completed"] + by["failed"]
    return {
        "total_tasks": n,
        "queued_tasks": by["queued"],
        "running_tasks": by["running"],
        "completed_tasks": by["completed"],
        "failed_tasks": by["failed"],
        "cancelled_tasks": by["cancelled"],
        "total_cost_usd": usd(cost),
        "avg_cost_per_task_usd": None if n == 0 else cost / n / 1e6,
        "input_tokens": sum(t.input_tokens for t in tasks),
        "output_tokens": sum(t.output_tokens for t in tasks),
        "total_tokens": sum(t.input_tokens + t.output_tokens for t in tasks),
        "success_rate": None if done == 0 else by["completed"] / done,
        "avg_duration_seconds": None if not durations else sum(durations) / len(durations) / 1e6,
        "tasks_per_day": n / ((end - start).total_seconds() / 86400),
        "failed_by_reason": {
            r: sum(1 for t in tasks if t.failure_reason == r) for r in ("lease_expired", "agent")
        },
    }


def metrics(tasks: Sequence[Any]) -> dict[str, Any]:
    n = len(tasks)
    completed = sum(1 for t in tasks if t.status == "completed")
    failed = sum(1 for t in tasks if t.status == "failed")
    cost = sum(t.cost_micros for t in tasks)
    durations = [t.duration_us / 1e6 for t in tasks if t.duration_us is not None]
    firsts = [f for f in (first_output_seconds(t) for t in tasks) if f is not None]
    return {
        "tasks": n,
        "completed": completed,
        "failed": failed,
        "success_rate": None if completed + failed == 0 else completed / (completed + failed),
        "avg_duration_seconds": None if not durations else sum(durations) / len(durations),
        "p50_duration_seconds": nearest_rank(durations, 0.5),
        "p95_duration_seconds": nearest_rank(durations, 0.95),
        "total_cost_usd": usd(cost),
        "avg_cost_usd": None if n == 0 else cost / n / 1e6,
        "input_tokens": sum(t.input_tokens for t in tasks),
        "output_tokens": sum(t.output_tokens for t in tasks),
        "p50_first_output_seconds": nearest_rank(firsts, 0.5),
    }


def boundaries(tz_name: str, period: str, start: datetime, end: datetime) -> list[datetime]:
    """Local period starts, found by walking UTC in 15-minute steps (no calendar maths)."""
    tz = ZoneInfo(tz_name)
    step = timedelta(minutes=15)
    t = datetime(start.year, start.month, start.day, tzinfo=UTC) - timedelta(days=2)
    out: list[datetime] = []
    prev = (t - step).astimezone(tz)
    while t <= end + timedelta(days=2):
        loc = t.astimezone(tz)
        if period == "hour":
            is_start = loc.minute == 0 and loc.second == 0
        else:
            is_start = loc.date() != prev.date()
        if is_start:
            out.append(t)
        prev = loc
        t += step
    first = max(i for i, b in enumerate(out) if b <= start)
    last = max(i for i, b in enumerate(out) if b < end)
    return out[first : last + 2]  # one more: the end of the last bucket


def histogram(
    tasks: Sequence[Any], tz_name: str, period: str, start: datetime, end: datetime
) -> list[dict[str, Any]]:
    bounds = boundaries(tz_name, period, start, end)
    out = []
    for lo, hi in itertools.pairwise(bounds):
        inside = [t for t in tasks if max(lo, start) <= t.created_at < min(hi, end)]
        out.append(
            {
                "start": lo,
                "tasks": len(inside),
                "completed": sum(1 for t in inside if t.status == "completed"),
                "failed": sum(1 for t in inside if t.status == "failed"),
                "cost_usd": usd(sum(t.cost_micros for t in inside)),
                "input_tokens": sum(t.input_tokens for t in inside),
                "output_tokens": sum(t.output_tokens for t in inside),
            }
        )
    return out


def assert_close(got: Any, want: Any, what: str) -> None:
    """Exact, or to 1e-9 relative for floats."""
    if want is None:
        assert got is None, what
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-9, abs=1e-12), what
    else:
        assert got == want, what


def _assert_percentile(got: Any, want: Any, what: str) -> None:
    if want is None:
        assert got is None, what
    else:
        assert abs(got - want) <= 0.02 * want + 1e-9, f"{what}: {got} vs {want}"


def assert_metrics(got: dict[str, Any], want: dict[str, Any], what: str) -> None:
    """Every figure as `assert_close`, percentiles within 2 %."""
    for key, value in want.items():
        if key.startswith("p50") or key.startswith("p95"):
            _assert_percentile(got[key], value, f"{what}.{key}")
        else:
            assert_close(got[key], value, f"{what}.{key}")
