"""What each rule kind measures (docs/api.md §15), from the figures a round read at once
(`reads.read_round`).

Windows of task figures are over `created_at`, the time axis of the analytics rollups:
the last `window_minutes` are whole rollup blocks plus or minus the raw rows of their
partial blocks at the edges (`analytics.window.cover_window`). Counts of events (lease
expiries, signature failures, failed index jobs) are ranges of time-ordered indexes. A
rule holds when its value is above zero and at least its threshold (for
`oauth_expiring` the threshold is a number of days, and any installation found makes it
hold).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from dashboard_api.db.models import Task
from dashboard_api.db.models.guards import AlertRule
from dashboard_api.money import micros_to_usd
from dashboard_api.services.alerts.reads import COUNT_KINDS, RoundReads, count_key
from dashboard_api.services.analytics.window import Agg
from dashboard_api.settings import Settings

# Kinds that cannot be used yet, and why (PUT answers 422 with the reason).
UNAVAILABLE_KINDS: dict[str, str] = (
    {}
    if hasattr(Task, "failure_reason")
    else {"lease_expired": "Rule kind 'lease_expired' needs task leases, which this version lacks."}
)
# Kinds whose value comes from the analytics rollups (the round folds pending writes first).
ROLLUP_KINDS = frozenset({"failure_rate", "cost_usd", "duration_p95_seconds"})


@dataclass(frozen=True, slots=True)
class Measure:
    value: float
    holds: bool
    summary: str


def _holds(value: float, threshold: float) -> bool:
    return value > 0 and value >= threshold


def _where(rule: AlertRule) -> str:
    parts = [
        f"{k} {v}"
        for k, v in (("agent type", rule.scope_agent_type), ("source", rule.scope_source))
        if v
    ]
    return f" ({', '.join(parts)})" if parts else ""


def _counters(rule: AlertRule, reads: RoundReads) -> Agg | None:
    """The counters of the rule's window and scope, summed over (agent type, source)
    once per window and scope in the round."""
    if reads.counters is None:
        return None
    key = (rule.window_minutes, rule.scope_agent_type, rule.scope_source)
    total = reads.scoped.get(key)
    if total is None:
        rows = [
            agg.c
            for (agent_type, source), agg in reads.counters[rule.window_minutes].items()
            if rule.scope_agent_type in (None, agent_type) and rule.scope_source in (None, source)
        ]
        total = Agg([sum(column) for column in zip(*rows, strict=True)]) if rows else Agg()
        reads.scoped[key] = total
    return total


def measure(rule: AlertRule, reads: RoundReads, settings: Settings) -> Measure | None:
    """The rule's value and whether it holds; None when what it needs could not be read."""
    last = f"in the last {rule.window_minutes} min{_where(rule)}"
    kind, threshold = rule.kind, rule.threshold
    if kind == "failure_rate":
        if (c := _counters(rule, reads)) is None:
            return None
        ended = c["completed"] + c["failed"] + c["cancelled"]
        rate = c["failed"] / ended if ended else 0.0
        holds = ended >= 5 and _holds(rate, threshold)
        return Measure(
            rate, holds, f"{c['failed']} of {ended} ended tasks failed ({rate:.0%}) {last}"
        )
    if kind == "cost_usd":
        if (c := _counters(rule, reads)) is None:
            return None
        cost = micros_to_usd(c["cost_micros"])
        return Measure(cost, _holds(cost, threshold), f"${cost:,.2f} spent {last}")
    if kind == "duration_p95_seconds":
        if reads.p95 is None:
            return None
        scope = (rule.scope_agent_type, rule.scope_source)
        p95 = reads.p95[rule.window_minutes].get(scope, 0.0)
        return Measure(p95, _holds(p95, threshold), f"p95 duration {p95:.1f} s {last}")
    if kind in COUNT_KINDS:
        return _measure_count(rule, reads)
    return _measure_integrations(rule, reads, settings)


_COUNT_SUMMARIES = {
    "agent_offline": "{n} agent(s) with running tasks and no heartbeat",
    "lease_expired": "{n} task lease(s) expired {last}",
    "webhook_signature_failures": "{n} webhook signature failure(s) {last}",
    "index_job_failed": "{n} index job(s) failed {last}",
}


def _measure_count(rule: AlertRule, reads: RoundReads) -> Measure | None:
    n = reads.counts.get(count_key(rule))
    if n is None:
        return None
    # Index jobs belong to no agent type or source: their summary names no scope.
    scope = _where(rule) if rule.kind != "index_job_failed" else ""
    last = f"in the last {rule.window_minutes} min{scope}"
    return Measure(n, _holds(n, rule.threshold), _COUNT_SUMMARIES[rule.kind].format(n=n, last=last))


def _measure_integrations(rule: AlertRule, reads: RoundReads, settings: Settings) -> Measure | None:
    """The rules on integrations and budgets: OAuth installations, budgets."""
    kind, threshold = rule.kind, rule.threshold
    if kind == "oauth_expiring":
        if reads.installations is None:
            return None
        try:
            soon = reads.now + timedelta(days=threshold)
        except OverflowError:  # a threshold past the calendar's end: any expiry is within
            soon = datetime.max.replace(tzinfo=UTC)
        found = 0
        for row in reads.installations:
            if rule.scope_source is not None and row.platform != rule.scope_source:
                continue
            required = getattr(settings, f"{row.platform}_required_scopes", [])
            missing = [s for s in required if s not in set(row.scopes)]
            expiring = row.token_expires_at is not None and row.token_expires_at <= soon
            found += bool(missing or expiring)
        return Measure(
            found,
            found > 0,
            f"{found} OAuth installation(s) expiring within {threshold:g} days or missing scopes",
        )
    if kind == "budget":
        if reads.budgets is None:
            return None
        ids = [
            b.budget_id
            for b in reads.budgets
            if rule.scope_agent_type in (None, b.agent_type)
            and rule.scope_source in (None, b.source)
        ]
        n = len(ids)
        names = ", ".join(ids[:5]) + ("…" if n > 5 else "")
        return Measure(
            n,
            _holds(n, threshold),
            f"{n} budget(s) in warning or exceeded{': ' + names if n else ''}",
        )
    raise ValueError(f"unknown rule kind {kind!r}")
