"""Realistic sample tasks for demos and benchmarks, generated in bulk."""

from __future__ import annotations

import asyncio
import bisect
import itertools
import math
import random
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard_api.db.bulk import (
    bulk_insert,
    drop_secondary_indexes,
    prepare_bulk_load,
    rebuild_indexes,
)
from dashboard_api.db.models import Task, TaskEvent
from dashboard_api.ids import new_id
from dashboard_api.services.analytics.rebuild import rebuild_rollups
from dashboard_api.services.leases import DEFAULT_LEASE_SECONDS, REPORTED_BY_AGENT
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
    "lease_expires_at", "lease_seconds", "failure_reason",
)  # fmt: skip
EVENT_COLUMNS = ("task_id", "type", "status", "at")
TABLES = (Task.__tablename__, TaskEvent.__tablename__)


def _picker(values: tuple[str, ...], weights: tuple[int, ...]) -> Any:
    """A function of one uniform [0, 1) draw that picks a value with these weights."""
    total = sum(weights)
    cum = list(itertools.accumulate(w / total for w in weights))
    cum[-1] = 1.0
    last = len(values) - 1

    def pick(u: float) -> str:
        return values[min(bisect.bisect_right(cum, u), last)]

    return pick


_STATUS_FRESH = _picker(("queued", "running", "completed", "failed"), (30, 40, 25, 5))
_STATUS_RECENT = _picker(("running", "completed", "failed", "cancelled"), (5, 80, 12, 3))
_STATUS_OLD = _picker(("completed", "failed", "cancelled"), (84, 13, 3))
_AGENT = _picker(AGENT_TYPES, AGENT_WEIGHTS)
_SOURCE = _picker(SOURCES, SOURCE_WEIGHTS)
_MODEL = _picker(MODELS, MODEL_WEIGHTS)
_TEN_MINUTES = timedelta(minutes=10)
_TWO_HOURS = timedelta(hours=2)


def _created_times(n: int, now: datetime, days: int, rng: random.Random) -> list[datetime]:
    """`n` creation times over the last `days` days, oldest first."""
    span = days * 86400.0
    oldest = now - timedelta(seconds=span)
    out = []
    for _ in range(n):
        # More work during the (UTC) working day; older days a little quieter.
        created = now - timedelta(seconds=span * (rng.random() ** 1.15))
        if 0 <= (created.hour - 13) % 24 < 10 and rng.random() < 0.35:
            created -= timedelta(hours=12)
            if created < oldest:
                created += timedelta(hours=12)
        out.append(created)
    out.sort()
    return out


def generate(
    n: int, *, now: datetime, days: int, prices: PriceTable, seed: int | None = None
) -> Iterator[tuple[tuple[Any, ...], list[tuple[Any, ...]]]]:
    """Yield (task row, status event rows) for `n` tasks spread over the last `days` days,
    in order of creation (as a live system writes them, which keeps the time-ordered
    indexes and the table's pages in time order)."""
    rng = random.Random(seed)
    rand = rng.random
    lease = now + timedelta(seconds=DEFAULT_LEASE_SECONDS)
    for created in _created_times(n, now, days, rng):
        age = now - created
        if age < _TEN_MINUTES:
            status = _STATUS_FRESH(rand())
        elif age < _TWO_HOURS:
            status = _STATUS_RECENT(rand())
        else:
            status = _STATUS_OLD(rand())
        agent_type = _AGENT(rand())
        source = _SOURCE(rand())
        model = _MODEL(rand())
        prompt = PROMPTS[int(rand() * len(PROMPTS))].format(
            repo=REPOS[int(rand() * len(REPOS))], n=2 + int(rand() * 9998)
        )
        task_id = new_id()
        events: list[tuple[Any, ...]] = [(task_id, "status", "queued", created)]
        started = completed = first_output = None
        duration_us = None
        in_tok = out_tok = cr_tok = cw_tok = 0
        if status != "queued":
            wait = min(rng.expovariate(1 / 8.0), 600.0)
            started = min(created + timedelta(seconds=wait), now)
            if status != "cancelled" or rand() < 0.5:
                events.append((task_id, "status", "running", started))
            else:
                started = None
            if started is not None:
                first_output = started + timedelta(seconds=0.3 + 5.7 * rand())
                in_tok = int(rng.lognormvariate(9.5, 1.0))
                out_tok = int(rng.lognormvariate(7.5, 1.0))
                cr_tok = int(in_tok * 3 * rand())
                cw_tok = int(in_tok * 0.3 * rand())
        if status in ("completed", "failed", "cancelled"):
            base = started or created
            seconds = min(math.exp(rng.gauss(5.0, 1.1)), 7200.0)
            completed = min(base + timedelta(seconds=seconds), now)
            if started is not None:
                duration_us = (completed - started) // _US
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
            f"{agent_type}-{1 + int(rand() * 4)}" if started else None,
            source, prompt,
            "Done: opened a pull request with the fix." if status == "completed" else None,
            "Agent exceeded its tool-call budget." if status == "failed" else None,
            f"user-{1 + int(rand() * 40)}", None, None,
            f"flow-{1 + int(rand() * 5000)}" if rand() < 0.3 else None,
            model, cost, False, in_tok, out_tok, cr_tok, cw_tok, duration_us,
            created, started, completed, completed or started or created,
            first_output if started else None, False, {}, 0, 0, False,
            # A running sample holds the default lease from now: nobody works on it, so
            # unless an agent takes it over it ends failed by the lease reaper.
            lease if status == "running" else None,
            DEFAULT_LEASE_SECONDS if status == "running" else None,
            REPORTED_BY_AGENT if status == "failed" else None,
        )  # fmt: skip
        yield row, events


_US = timedelta(microseconds=1)


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
    existing = await session.scalar(select(func.count()).select_from(Task))
    # A load at least as large as the table: build the indexes once at the end.
    dropped = await drop_secondary_indexes(session, TABLES) if n >= (existing or 0) else []
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
    await rebuild_indexes(session, dropped)
    # analytics: COPY bypasses the task-write hook, so the rollups are recomputed (in this
    # transaction, so that they never disagree with the tasks).
    await rebuild_rollups(session, bulk=True)
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
