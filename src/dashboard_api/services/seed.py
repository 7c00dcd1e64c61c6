"""Realistic sample tasks for demos and benchmarks, generated in bulk."""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from dashboard_api.db.bulk import bulk_insert, prepare_bulk_load
from dashboard_api.db.models import Task, TaskEvent
from dashboard_api.ids import new_id
from dashboard_api.services.pricing import PriceTable

AGENT_TYPES = ("claude-code", "reviewer", "triage", "docs-writer", "test-fixer", "planner")
AGENT_WEIGHTS = (40, 20, 15, 8, 12, 5)
SOURCES = ("github", "jira", "slack", "dashboard", "api")
SOURCE_WEIGHTS = (45, 20, 15, 15, 5)
MODELS = ("claude-sonnet-4", "claude-opus-4", "claude-haiku-4", "gpt-5", "gpt-5-mini")
MODEL_WEIGHTS = (50, 10, 20, 12, 8)
PROMPTS = (
    "Fix the failing test in {repo} ({n} assertions)",
    "Review pull request #{n} in {repo}",
    "Triage issue #{n}: crash when saving settings",
    "Write docs for the {repo} CLI flags",
    "Upgrade dependencies of {repo} and fix breakages",
    "Plan the migration of {repo} to the new auth service",
    "Answer in Slack: why does the build of {repo} take {n} minutes?",
    "Investigate flaky job #{n} on main of {repo}",
)
REPOS = ("acme/web", "acme/api", "acme/mobile", "acme/infra", "acme/payments", "acme/search")

TASK_COLUMNS = (
    "task_id", "status", "agent_type", "assigned_agent", "source", "input_message", "result",
    "error", "user_id", "conversation_id", "parent_task_id", "flow_id", "model", "cost_micros",
    "cost_reported", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
    "duration_us", "created_at", "started_at", "completed_at", "updated_at", "first_output_at",
    "cancel_requested", "metadata", "output_seq", "output_bytes", "output_truncated",
)  # fmt: skip
EVENT_COLUMNS = ("task_id", "type", "status", "at")


def _status_for(age: timedelta, rng: random.Random) -> str:
    if age < timedelta(minutes=10):
        return rng.choices(("queued", "running", "completed", "failed"), (30, 40, 25, 5))[0]
    if age < timedelta(hours=2):
        return rng.choices(("running", "completed", "failed", "cancelled"), (5, 80, 12, 3))[0]
    return rng.choices(("completed", "failed", "cancelled"), (84, 13, 3))[0]


def generate(
    n: int, *, now: datetime, days: int, prices: PriceTable, seed: int | None = None
) -> Iterator[tuple[tuple[Any, ...], list[tuple[Any, ...]]]]:
    """Yield (task row, status event rows) for `n` tasks spread over the last `days` days."""
    rng = random.Random(seed)
    span = days * 86400.0
    for _ in range(n):
        # More work during the (UTC) working day; older days a little quieter.
        offset = span * (rng.random() ** 1.15)
        created = now - timedelta(seconds=offset)
        if 0 <= (created.hour - 13) % 24 < 10 and rng.random() < 0.35:
            created -= timedelta(hours=12)
            if created < now - timedelta(seconds=span):
                created += timedelta(hours=12)
        age = now - created
        status = _status_for(age, rng)
        agent_type = rng.choices(AGENT_TYPES, AGENT_WEIGHTS)[0]
        source = rng.choices(SOURCES, SOURCE_WEIGHTS)[0]
        model = rng.choices(MODELS, MODEL_WEIGHTS)[0]
        prompt = rng.choice(PROMPTS).format(repo=rng.choice(REPOS), n=rng.randint(2, 9999))
        events: list[tuple[Any, ...]] = []
        task_id = new_id()
        events.append((task_id, "status", "queued", created))
        started = completed = first_output = None
        duration_us = None
        in_tok = out_tok = cr_tok = cw_tok = 0
        if status != "queued":
            wait = min(rng.expovariate(1 / 8.0), 600.0)
            started = min(created + timedelta(seconds=wait), now)
            if status != "cancelled" or rng.random() < 0.5:
                events.append((task_id, "status", "running", started))
            else:
                started = None
            if started is not None:
                first_output = started + timedelta(seconds=rng.uniform(0.3, 6.0))
                in_tok = int(rng.lognormvariate(9.5, 1.0))
                out_tok = int(rng.lognormvariate(7.5, 1.0))
                cr_tok = int(in_tok * rng.uniform(0, 3))
                cw_tok = int(in_tok * rng.uniform(0, 0.3))
        if status in ("completed", "failed", "cancelled"):
            base = started or created
            seconds = min(math.exp(rng.gauss(5.0, 1.1)), 7200.0)
            completed = min(base + timedelta(seconds=seconds), now)
            if started is not None:
                duration_us = int((completed - started).total_seconds() * 1_000_000)
            events.append((task_id, "status", status, completed))
        cost = prices.cost_micros(
            model,
            input_tokens=in_tok,
            output_tokens=out_tok,
            cache_read_tokens=cr_tok,
            cache_write_tokens=cw_tok,
        )
        row: tuple[Any, ...] = (
            task_id, status, agent_type,
            f"{agent_type}-{rng.randint(1, 4)}" if started else None,
            source, prompt,
            "Done: opened a pull request with the fix." if status == "completed" else None,
            "Agent exceeded its tool-call budget." if status == "failed" else None,
            f"user-{rng.randint(1, 40)}", None, None,
            f"flow-{rng.randint(1, 5000)}" if rng.random() < 0.3 else None,
            model, cost, False, in_tok, out_tok, cr_tok, cw_tok, duration_us,
            created, started, completed, completed or started or created,
            first_output if started else None, False, {}, 0, 0, False,
        )  # fmt: skip
        yield row, events


async def seed_tasks(
    session: AsyncSession,
    *,
    n: int,
    now: datetime,
    prices: PriceTable,
    days: int = 90,
    batch: int = 20_000,
    seed: int | None = None,
) -> int:
    """Insert `n` generated tasks with their status events; returns the number inserted."""
    await prepare_bulk_load(session)
    batches = _batches(generate(n, now=now, days=days, prices=prices, seed=seed), batch)
    # Generate the next batch in a thread while the database loads this one: the two
    # costs are of the same order, so overlapping them shortens a large seed.
    pending = asyncio.ensure_future(asyncio.to_thread(next, batches, None))
    done = 0
    try:
        while (chunk := await pending) is not None:
            pending = asyncio.ensure_future(asyncio.to_thread(next, batches, None))
            await _flush(session, *chunk)
            done += len(chunk[0])
    finally:
        if not pending.done():
            await asyncio.gather(pending, return_exceptions=True)
    # analytics: COPY bypasses the task-write hook, so the rollups are recomputed (in this
    # transaction, so that they never disagree with the tasks).
    from dashboard_api.services.analytics_rollups import rebuild_rollups

    await rebuild_rollups(session)
    return done


def _batches(
    rows: Iterator[tuple[tuple[Any, ...], list[tuple[Any, ...]]]], size: int
) -> Iterator[tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]]:
    tasks: list[tuple[Any, ...]] = []
    events: list[tuple[Any, ...]] = []
    for row, evs in rows:
        tasks.append(row)
        events.extend(evs)
        if len(tasks) >= size:
            yield tasks, events
            tasks, events = [], []
    if tasks:
        yield tasks, events


async def _flush(
    session: AsyncSession, tasks: list[tuple[Any, ...]], events: list[tuple[Any, ...]]
) -> None:
    await bulk_insert(session, Task.__table__, TASK_COLUMNS, tasks)  # type: ignore[arg-type]
    await bulk_insert(session, TaskEvent.__table__, EVENT_COLUMNS, events)  # type: ignore[arg-type]
