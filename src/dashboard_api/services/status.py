"""System status and readiness: real round trips to each dependency, each under a timeout."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select

from dashboard_api import __version__
from dashboard_api.context import AppContext
from dashboard_api.db.models import Task
from dashboard_api.schemas.agents import (
    AgentCounts,
    BrokerComponent,
    Components,
    DatabaseComponent,
    RealtimeStatus,
    SystemStatus,
    TaskCounts,
)
from dashboard_api.services.agents import count_agents
from dashboard_api.task_statuses import TASK_STATUSES

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Probe:
    """The outcome of one dependency check."""

    ok: bool
    latency_ms: float | None
    error: str | None = None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__


async def probe_database(ctx: AppContext) -> Probe:
    """`SELECT 1` within the dependency timeout."""
    timeout = ctx.settings.dependency_timeout_seconds
    try:
        async with asyncio.timeout(timeout):
            latency = await ctx.db.ping(timeout)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # any failure to answer in time means "down"
        log.warning("database check failed: %s", _describe(exc))
        return Probe(False, None, _describe(exc))
    return Probe(True, round(latency, 3))


def broker_backend(ctx: AppContext) -> str:
    """'redis' or 'memory' (no broker installed yet counts as memory)."""
    backend = getattr(ctx.broker, "backend", None)
    if backend in ("redis", "memory"):
        return str(backend)
    return "redis" if ctx.broker is not None and ctx.settings.redis_url else "memory"


async def probe_broker(ctx: AppContext) -> Probe:
    """The broker's own ping within the dependency timeout; no broker = in-process, ok."""
    if ctx.broker is None:
        return Probe(True, 0.0)
    timeout = ctx.settings.dependency_timeout_seconds
    try:
        async with asyncio.timeout(timeout):
            latency = await ctx.broker.ping(timeout)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.warning("broker check failed: %s", _describe(exc))
        return Probe(False, None, _describe(exc))
    return Probe(True, round(float(latency), 3))


async def probe_all(ctx: AppContext) -> dict[str, Probe]:
    """Both checks, concurrently, so the worst case is one timeout, not the sum."""
    database, broker = await asyncio.gather(probe_database(ctx), probe_broker(ctx))
    return {"database": database, "broker": broker}


def realtime_counts(hub: Any) -> tuple[int, int]:
    """(connections, subscriptions) of this replica's hub; zeros when there is none."""
    if hub is None:
        return 0, 0
    return int(getattr(hub, "connection_count", 0)), int(getattr(hub, "subscription_count", 0))


async def task_status_counts(ctx: AppContext) -> tuple[int, int]:
    """(queued, running): a range of the status index, only the rows in those states."""
    counts = {"queued": 0, "running": 0}
    stmt = (
        select(Task.status, func.count())
        .where(Task.status.in_(("queued", "running")))
        .group_by(Task.status)
    )
    async with ctx.db.read() as session:
        for status, count in await session.execute(stmt):
            counts[status] = int(count)
    return counts["queued"], counts["running"]


async def system_status(ctx: AppContext) -> SystemStatus:
    """The document of `GET /api/status`; figures that need a down database are null."""
    probes = await probe_all(ctx)
    db_probe, broker_probe = probes["database"], probes["broker"]
    now = ctx.clock.now()
    tasks = TaskCounts(queued=None, running=None)
    agents = AgentCounts(online=None, total=None)
    if db_probe.ok:
        try:
            async with asyncio.timeout(ctx.settings.dependency_timeout_seconds):
                queued, running = await task_status_counts(ctx)
                async with ctx.db.read() as session:
                    online, total = await count_agents(
                        session, now=now, window=ctx.settings.agent_online_seconds
                    )
            tasks = TaskCounts(queued=queued, running=running)
            agents = AgentCounts(online=online, total=total)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the database went away between the ping and the counts
            db_probe = Probe(False, None, _describe(exc))
    connections, subscriptions = realtime_counts(ctx.hub)
    ok = db_probe.ok and broker_probe.ok
    return SystemStatus(
        status="ok" if ok else "degraded",
        version=__version__,
        started_at=ctx.started_at,
        uptime_seconds=round(max(0.0, (now - ctx.started_at).total_seconds()), 3),
        components=Components(
            database=DatabaseComponent(
                ok=db_probe.ok,
                backend=ctx.db.backend,
                latency_ms=db_probe.latency_ms,
                error=db_probe.error,
            ),
            broker=BrokerComponent(
                ok=broker_probe.ok,
                backend=broker_backend(ctx),
                latency_ms=broker_probe.latency_ms,
                error=broker_probe.error,
            ),
        ),
        realtime=RealtimeStatus(connections=connections, subscriptions=subscriptions),
        tasks=tasks,
        agents=agents,
    )


async def task_counts_by_status(
    ctx: AppContext, statuses: Sequence[str] | None = None
) -> dict[str, int]:
    """Tasks per status (all statuses, zeros included; or only `statuses`), for `/metrics`."""
    wanted = list(statuses) if statuses is not None else list(TASK_STATUSES)
    counts = dict.fromkeys(wanted, 0)
    stmt = select(Task.status, func.count()).group_by(Task.status)
    if statuses is not None:
        stmt = stmt.where(Task.status.in_(wanted))
    async with ctx.db.read() as session:
        for status, count in await session.execute(stmt):
            counts[str(status)] = int(count)
    return counts
