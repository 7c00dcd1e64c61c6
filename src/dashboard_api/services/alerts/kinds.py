"""What each rule kind measures (API.md §15), from the rollups and small indexed queries.

Windows of task figures are over `created_at`, the time axis of the analytics rollups:
the last `window_minutes` are whole rollup blocks plus the raw rows of at most half a
15-minute block at the start (`analytics.reads.summary`). Counts of events (lease expiries,
signature failures, failed index jobs) are ranges of time-ordered indexes. A rule holds
when its value is above zero and at least its threshold (for `oauth_expiring` the
threshold is a number of days, and any installation found makes it hold).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard_api.db.models import Agent, IndexJob, OAuthInstallation, Task, WebhookEvent
from dashboard_api.db.models.guards import AlertRule, Budget
from dashboard_api.services.analytics.performance import performance
from dashboard_api.services.analytics.reads import summary
from dashboard_api.services.analytics.window import AnalyticsFilters
from dashboard_api.services.webhooks import SIGNATURE_REJECTIONS
from dashboard_api.settings import Settings

# Kinds that cannot be used yet, and why (PUT answers 422 with the reason).
UNAVAILABLE_KINDS: dict[str, str] = (
    {}
    if hasattr(Task, "failure_reason")
    else {"lease_expired": "Rule kind 'lease_expired' needs task leases, which this version lacks."}
)
# Kinds whose value comes from the analytics rollups (the round folds pending writes first).
ROLLUP_KINDS = frozenset({"failure_rate", "cost_usd", "duration_p95_seconds"})
# The longest lease (API.md §13): a task whose lease expired in the window was created
# at most this long before it.
_MAX_LEASE = timedelta(seconds=86400)


@dataclass(frozen=True, slots=True)
class Measure:
    value: float
    holds: bool
    summary: str


def _holds(value: float, threshold: float) -> bool:
    return value > 0 and value >= threshold


def _filters(rule: AlertRule) -> AnalyticsFilters:
    return AnalyticsFilters(
        agent_type=(rule.scope_agent_type,) if rule.scope_agent_type else (),
        source=(rule.scope_source,) if rule.scope_source else (),
    )


def _where(rule: AlertRule) -> str:
    parts = [
        f"{k} {v}"
        for k, v in (("agent type", rule.scope_agent_type), ("source", rule.scope_source))
        if v
    ]
    return f" ({', '.join(parts)})" if parts else ""


async def _count(session: AsyncSession, stmt: Any) -> int:
    return int(await session.scalar(stmt) or 0)


async def measure(
    session: AsyncSession, rule: AlertRule, *, now: datetime, settings: Settings
) -> Measure:
    """The rule's value at `now` and whether it holds."""
    window = timedelta(minutes=rule.window_minutes)
    start = now - window
    last = f"in the last {rule.window_minutes} min{_where(rule)}"
    kind, threshold = rule.kind, rule.threshold
    if kind == "failure_rate":
        s = await summary(session, start=start, end=now, filters=_filters(rule), now=now)
        ended = s.completed_tasks + s.failed_tasks + s.cancelled_tasks
        rate = s.failed_tasks / ended if ended else 0.0
        holds = ended >= 5 and _holds(rate, threshold)
        return Measure(
            rate, holds, f"{s.failed_tasks} of {ended} ended tasks failed ({rate:.0%}) {last}"
        )
    if kind == "cost_usd":
        s = await summary(session, start=start, end=now, filters=_filters(rule), now=now)
        cost = s.total_cost_usd
        return Measure(cost, _holds(cost, threshold), f"${cost:,.2f} spent {last}")
    if kind == "duration_p95_seconds":
        p = await performance(session, start=start, end=now, filters=_filters(rule), now=now)
        p95 = p.overall.p95_duration_seconds or 0.0
        return Measure(p95, _holds(p95, threshold), f"p95 duration {p95:.1f} s {last}")
    if kind in ("agent_offline", "lease_expired", "webhook_signature_failures"):
        return await _measure_events(session, rule, now=now, settings=settings)
    return await _measure_integrations(session, rule, now=now, settings=settings)


async def _measure_events(
    session: AsyncSession, rule: AlertRule, *, now: datetime, settings: Settings
) -> Measure:
    """The rules that count events: agents gone quiet, expired leases, bad signatures."""
    start = now - timedelta(minutes=rule.window_minutes)
    last = f"in the last {rule.window_minutes} min{_where(rule)}"
    kind, threshold = rule.kind, rule.threshold
    if kind == "agent_offline":
        cut = now - timedelta(seconds=settings.agent_online_seconds)
        t = Task.__table__.c
        running = select(t.task_id).where(t.status == "running", t.assigned_agent == Agent.name)
        if rule.scope_agent_type:
            running = running.where(t.agent_type == rule.scope_agent_type)
        n = await _count(
            session,
            select(func.count())
            .select_from(Agent)
            .where(
                or_(Agent.last_heartbeat_at.is_(None), Agent.last_heartbeat_at < cut),
                running.exists(),
            ),
        )
        return Measure(n, _holds(n, threshold), f"{n} agent(s) with running tasks and no heartbeat")
    if kind == "lease_expired":
        t = Task.__table__.c
        stmt = select(func.count()).where(
            t.status == "failed",
            t.created_at >= start - _MAX_LEASE,
            t.completed_at >= start,
            t.failure_reason == "lease_expired",
        )
        if rule.scope_agent_type:
            stmt = stmt.where(t.agent_type == rule.scope_agent_type)
        if rule.scope_source:
            stmt = stmt.where(t.source == rule.scope_source)
        n = await _count(session, stmt)
        return Measure(n, _holds(n, threshold), f"{n} task lease(s) expired {last}")
    if kind == "webhook_signature_failures":
        w = WebhookEvent
        stmt = select(func.count()).where(
            w.status == "failed", w.received_at >= start, w.error.in_(SIGNATURE_REJECTIONS)
        )
        if rule.scope_source:
            stmt = stmt.where(w.source == rule.scope_source)
        n = await _count(session, stmt)
        return Measure(n, _holds(n, threshold), f"{n} webhook signature failure(s) {last}")
    raise ValueError(f"unknown rule kind {kind!r}")


async def _measure_integrations(
    session: AsyncSession, rule: AlertRule, *, now: datetime, settings: Settings
) -> Measure:
    """The rules on integrations and budgets: OAuth installations, index jobs, budgets."""
    start = now - timedelta(minutes=rule.window_minutes)
    kind, threshold = rule.kind, rule.threshold
    if kind == "oauth_expiring":
        soon = now + timedelta(days=threshold)
        o = OAuthInstallation
        installs = select(o)
        if rule.scope_source:
            installs = installs.where(o.platform == rule.scope_source)
        found = 0
        for row in (await session.scalars(installs)).all():
            required = getattr(settings, f"{row.platform}_required_scopes", [])
            missing = [s for s in required if s not in set(row.scopes)]
            expiring = row.token_expires_at is not None and row.token_expires_at <= soon
            found += bool(missing or expiring)
        return Measure(
            found,
            found > 0,
            f"{found} OAuth installation(s) expiring within {threshold:g} days or missing scopes",
        )
    if kind == "index_job_failed":
        j = IndexJob
        n = await _count(
            session, select(func.count()).where(j.status == "failed", j.finished_at >= start)
        )
        return Measure(
            n,
            _holds(n, threshold),
            f"{n} index job(s) failed in the last {rule.window_minutes} min",
        )
    if kind == "budget":
        b = Budget
        budgets = select(b.budget_id).where(b.state.in_(("warning", "exceeded")))
        if rule.scope_agent_type:
            budgets = budgets.where(b.scope_agent_type == rule.scope_agent_type)
        if rule.scope_source:
            budgets = budgets.where(b.scope_source == rule.scope_source)
        ids = list((await session.scalars(budgets.order_by(b.budget_id))).all())
        n = len(ids)
        names = ", ".join(ids[:5]) + ("…" if n > 5 else "")
        return Measure(
            n,
            _holds(n, threshold),
            f"{n} budget(s) in warning or exceeded{': ' + names if n else ''}",
        )
    raise ValueError(f"unknown rule kind {kind!r}")
