"""What each rule kind measures (docs/api.md §15), from the rollups and small indexed queries.

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
from dashboard_api.money import micros_to_usd
from dashboard_api.services.analytics.performance import counters_by_combination, p95_durations
from dashboard_api.services.analytics.window import Agg, AnalyticsFilters
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
# The longest lease (docs/api.md §13): a task whose lease expired in the window was created
# at most this long before it.
_MAX_LEASE = timedelta(seconds=86400)


class Windows:
    """The rollup figures of one round, per window: every rule over the same window
    reads the same per-(agent type, source) counters and per-group percentiles, so a
    round costs a few statements per distinct window, not per rule."""

    def __init__(self, session: AsyncSession, now: datetime) -> None:
        self.session, self.now = session, now
        self._combos: dict[int, dict[tuple[str, str], Agg]] = {}
        self._p95: dict[tuple[int, str | None, str | None], dict[tuple[str, str], float]] = {}
        self._counts: dict[tuple[Any, ...], int] = {}
        self._rows: dict[tuple[Any, ...], list[Any]] = {}

    async def scalars(self, rule: AlertRule, stmt: Any) -> list[Any]:
        """A statement's rows, once per (kind, scope) in the round."""
        key = (rule.kind, rule.scope_agent_type, rule.scope_source)
        if key not in self._rows:
            self._rows[key] = list((await self.session.scalars(stmt)).all())
        return self._rows[key]

    async def count(self, rule: AlertRule, stmt: Any) -> int:
        """A count statement's value, once per (kind, window, scope) in the round."""
        key = (rule.kind, rule.window_minutes, rule.scope_agent_type, rule.scope_source)
        if key not in self._counts:
            self._counts[key] = int(await self.session.scalar(stmt) or 0)
        return self._counts[key]

    async def counters(self, rule: AlertRule) -> Agg:
        minutes = rule.window_minutes
        combos = self._combos.get(minutes)
        if combos is None:
            start = self.now - timedelta(minutes=minutes)
            combos = await counters_by_combination(
                self.session, start=start, end=self.now, now=self.now
            )
            self._combos[minutes] = combos
        total = Agg()
        for (agent_type, source), agg in combos.items():
            if rule.scope_agent_type not in (None, agent_type):
                continue
            if rule.scope_source not in (None, source):
                continue
            total.merge(agg)
        return total

    async def p95(self, rule: AlertRule) -> float | None:
        both = rule.scope_agent_type is not None and rule.scope_source is not None
        key = (
            rule.window_minutes,
            rule.scope_agent_type if both else None,
            rule.scope_source if both else None,
        )
        groups = self._p95.get(key)
        if groups is None:
            start = self.now - timedelta(minutes=rule.window_minutes)
            filters = _filters(rule) if both else AnalyticsFilters()
            groups = await p95_durations(
                self.session, start=start, end=self.now, filters=filters, now=self.now
            )
            self._p95[key] = groups
        if both or (rule.scope_agent_type is None and rule.scope_source is None):
            return groups.get(("", ""))
        if rule.scope_agent_type is not None:
            return groups.get(("agent_type", rule.scope_agent_type))
        return groups.get(("source", rule.scope_source or ""))


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


async def measure(
    session: AsyncSession,
    rule: AlertRule,
    *,
    now: datetime,
    settings: Settings,
    windows: Windows | None = None,
) -> Measure:
    """The rule's value at `now` and whether it holds (`windows`: the round's shared
    rollup figures and counts)."""
    windows = windows or Windows(session, now)
    last = f"in the last {rule.window_minutes} min{_where(rule)}"
    kind, threshold = rule.kind, rule.threshold
    if kind == "failure_rate":
        c = await windows.counters(rule)
        ended = c["completed"] + c["failed"] + c["cancelled"]
        rate = c["failed"] / ended if ended else 0.0
        holds = ended >= 5 and _holds(rate, threshold)
        return Measure(
            rate, holds, f"{c['failed']} of {ended} ended tasks failed ({rate:.0%}) {last}"
        )
    if kind == "cost_usd":
        cost = micros_to_usd((await windows.counters(rule))["cost_micros"])
        return Measure(cost, _holds(cost, threshold), f"${cost:,.2f} spent {last}")
    if kind == "duration_p95_seconds":
        p95 = await windows.p95(rule) or 0.0
        return Measure(p95, _holds(p95, threshold), f"p95 duration {p95:.1f} s {last}")
    if kind in ("agent_offline", "lease_expired", "webhook_signature_failures"):
        return await _measure_events(windows, rule, now=now, settings=settings)
    return await _measure_integrations(windows, rule, now=now, settings=settings)


async def _measure_events(
    windows: Windows, rule: AlertRule, *, now: datetime, settings: Settings
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
        n = await windows.count(
            rule,
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
        n = await windows.count(rule, stmt)
        return Measure(n, _holds(n, threshold), f"{n} task lease(s) expired {last}")
    if kind == "webhook_signature_failures":
        w = WebhookEvent
        stmt = select(func.count()).where(
            w.status == "failed", w.received_at >= start, w.error.in_(SIGNATURE_REJECTIONS)
        )
        if rule.scope_source:
            stmt = stmt.where(w.source == rule.scope_source)
        n = await windows.count(rule, stmt)
        return Measure(n, _holds(n, threshold), f"{n} webhook signature failure(s) {last}")
    raise ValueError(f"unknown rule kind {kind!r}")


async def _measure_integrations(
    windows: Windows, rule: AlertRule, *, now: datetime, settings: Settings
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
        for row in await windows.scalars(rule, installs):
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
        n = await windows.count(
            rule, select(func.count()).where(j.status == "failed", j.finished_at >= start)
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
        ids = await windows.scalars(rule, budgets.order_by(b.budget_id))
        n = len(ids)
        names = ", ".join(ids[:5]) + ("…" if n > 5 else "")
        return Measure(
            n,
            _holds(n, threshold),
            f"{n} budget(s) in warning or exceeded{': ' + names if n else ''}",
        )
    raise ValueError(f"unknown rule kind {kind!r}")
