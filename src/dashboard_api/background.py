"""Background work of one app, opened in its lifespan: the periodic jobs (each on one
replica at a time, see jobs/) and demo mode."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from typing import Any

from dashboard_api.aiotasks import stop_tasks
from dashboard_api.context import AppContext
from dashboard_api.db.engine import PendingEvent
from dashboard_api.demo import start_demo
from dashboard_api.jobs import Job, JobRunner, leadership_for
from dashboard_api.jobs.reaper import reap_expired_leases
from dashboard_api.observability.setup import metrics_of
from dashboard_api.otlp.store import prune_spans
from dashboard_api.services.agents import stale_agents, sweep_offline
from dashboard_api.services.alerts.evaluate import evaluate_rules
from dashboard_api.services.alerts.outbox import run_sender_once
from dashboard_api.services.analytics.fold import fold_waiting
from dashboard_api.services.budgets.jobs import run_budgets_once
from dashboard_api.services.retention import PruneReport, prune_once

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


async def fold_analytics_once(ctx: AppContext) -> None:
    """Fold the rollup contributions task writes left pending (counted for `/metrics`)."""
    metrics_of(ctx).count_folded(await fold_waiting(ctx.db))


def periodic_jobs(ctx: AppContext) -> list[Job]:
    """Every periodic job of the service, one line each (an interval of 0 turns one off)."""
    settings = ctx.settings
    fold_every = settings.analytics_fold_interval_seconds
    return [
        Job("agent-sweeper", settings.agent_sweep_interval_seconds, lambda: sweep_agents_once(ctx)),
        Job(
            "analytics-fold",
            fold_every if settings.analytics_rollups_enabled else 0,
            lambda: fold_analytics_once(ctx),
        ),
        Job("otlp-prune", settings.otlp_prune_interval_seconds, lambda: prune_otlp_once(ctx)),
        # Budgets (docs/api.md §14): states announced, running tasks of exceeded
        # hold_and_cancel budgets asked to stop (a hold itself is set by the task write).
        Job(
            "budgets",
            settings.budgets_evaluate_interval_seconds,
            lambda: run_budgets_once(ctx.db, settings, ctx.clock),
        ),
        # Alert rules (docs/api.md §15): alerts opened and resolved, deliveries written.
        Job(
            "alert-rules",
            settings.alerts_evaluate_interval_seconds,
            lambda: evaluate_rules(ctx.db, settings, now=ctx.clock.now()),
        ),
        # The notification outbox: due deliveries sent, every attempt recorded.
        Job(
            "alert-sender",
            settings.alerts_sender_interval_seconds,
            lambda: run_sender_once(ctx.db, settings, ctx.clock),
        ),
        # Retention (docs/api.md §16): old terminal tasks deleted with their output and events.
        Job(
            "retention-prune",
            settings.prune_interval_seconds if settings.retention_days is not None else 0,
            lambda: prune_expired_once(ctx),
        ),
        Job("lease-reaper", settings.lease_reap_interval_seconds, lambda: reap_expired_leases(ctx)),
    ]


async def prune_expired_once(ctx: AppContext) -> PruneReport | None:
    """Delete the terminal tasks older than `retention_days` (services/retention.py)."""
    days = ctx.settings.retention_days
    if days is None:
        return None
    report = await prune_once(
        ctx.db,
        older_than=ctx.clock.now() - timedelta(days=days),
        batch_size=ctx.settings.prune_batch_rows,
    )
    if report.tasks:
        log.info("retention: %s", report.line())
    return report


async def prune_otlp_once(ctx: AppContext) -> None:
    """Drop OTLP spans past their retention (otlp/store.py)."""
    await prune_spans(
        ctx.db, now=ctx.clock.now(), retention_seconds=ctx.settings.otlp_span_retention_seconds
    )


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
    """Start the periodic jobs (and, with `demo`, the demo data and simulated agents)."""
    _count_published(ctx)
    runner = JobRunner(leadership_for(ctx.db, timeout=ctx.settings.dependency_timeout_seconds))
    for job in periodic_jobs(ctx):
        runner.add(job)
    ctx.jobs = runner
    runner.start()
    tasks: list[asyncio.Task[Any]] = []
    if ctx.settings.demo:
        tasks.extend(await start_demo(ctx))
    try:
        yield
    finally:
        await stop_tasks(tasks, what="background work")
        await runner.stop()
