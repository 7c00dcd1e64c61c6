"""Background work of one app, opened in its lifespan: the agent sweeper, the analytics
fold and demo mode."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

from dashboard_api.aiotasks import raise_if_cancelled, stop_tasks
from dashboard_api.context import AppContext
from dashboard_api.db.engine import PendingEvent
from dashboard_api.observability.setup import metrics_of
from dashboard_api.services.agents import stale_agents, sweep_offline
from dashboard_api.services.analytics_fold import fold_loop

log = logging.getLogger(__name__)


async def sweep_agents_once(ctx: AppContext) -> list[str]:
    """Announce agents whose heartbeat expired; a read when there are none (the usual case)."""
    now = ctx.clock.now()
    window = ctx.settings.agent_online_seconds
    async with ctx.db.read() as session:
        if not await stale_agents(session, now=now, window=window):
            return []
    async with ctx.db.write() as session:
        return await sweep_offline(session, now=now, window=window)


async def _sweeper(ctx: AppContext, interval: float) -> None:
    while True:
        raise_if_cancelled()
        await asyncio.sleep(interval)
        try:
            await sweep_agents_once(ctx)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the database may be down for a while; keep sweeping
            log.warning("agent sweep failed: %s", exc)


def _count_published(ctx: AppContext) -> None:
    """Count what the database hands the realtime publisher (for `/metrics`)."""
    inner = ctx.db.publisher
    if inner is None:
        return
    metrics = metrics_of(ctx)

    async def counting(events: Sequence[PendingEvent]) -> None:
        metrics.count_published(len(events))
        await inner(events)

    ctx.db.publisher = counting


@contextlib.asynccontextmanager
async def background_lifespan(ctx: AppContext) -> AsyncIterator[None]:
    """Start the sweeper, the analytics fold (and, with `demo`, the demo data and
    simulated agents)."""
    _count_published(ctx)
    tasks: list[asyncio.Task[Any]] = []
    interval = ctx.settings.agent_sweep_interval_seconds
    if interval > 0:
        tasks.append(asyncio.create_task(_sweeper(ctx, interval), name="agent-sweeper"))
    fold_every = ctx.settings.analytics_fold_interval_seconds
    if fold_every > 0 and ctx.settings.analytics_rollups_enabled:
        folder = fold_loop(ctx.db, fold_every, metrics_of(ctx).count_folded)
        tasks.append(asyncio.create_task(folder, name="analytics-fold"))
    if ctx.settings.demo:
        from dashboard_api.demo import start_demo

        tasks.extend(await start_demo(ctx))
    try:
        yield
    finally:
        await stop_tasks(tasks, what="background work")
