"""What one round of alert rules reads: the figures of every rule in at most three
statements, whatever the number of rules.

The enabled rules are planned first (which windows, scopes and counts they need), then
read at once:
- the counters of every window of the `failure_rate` and `cost_usd` rules, and the
  duration percentiles of every window of the `duration_p95_seconds` rules (one
  statement each, `services.analytics.trailing`);
- the event counts and the integrations (one statement): per kind of count, one
  aggregate over its index range of the widest window, with a conditional count per
  distinct (window, scope); the OAuth installations and the budgets in warning or
  exceeded as JSON rows (a handful each).

A statement that fails leaves the rules it serves unmeasured (their state stays as it
is) and the round goes on; the counts are then read again kind by kind, so that a kind
this database cannot answer does not silence the others.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import ColumnElement, Select, and_, bindparam, case, func, or_, select, true
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard_api.db.dialect import dialect_of
from dashboard_api.db.models import Agent, IndexJob, OAuthInstallation, Task, WebhookEvent
from dashboard_api.db.models.guards import AlertRule, Budget
from dashboard_api.services.analytics.trailing import Pair, Scope, trailing_counters, trailing_p95
from dashboard_api.services.analytics.window import Agg
from dashboard_api.services.webhooks import SIGNATURE_REJECTIONS
from dashboard_api.settings import Settings
from dashboard_api.timeutil import to_utc

log = logging.getLogger(__name__)

COUNTER_KINDS = frozenset({"failure_rate", "cost_usd"})
COUNT_KINDS = frozenset(
    {"agent_offline", "lease_expired", "webhook_signature_failures", "index_job_failed"}
)
# The longest lease (docs/api.md §13): a task whose lease expired in the window was created
# at most this long before it.
_MAX_LEASE = timedelta(seconds=86400)

# A count's key: (kind, window minutes, agent type, source), None where the kind has no
# such dimension.
CountKey = tuple[str, int | None, str | None, str | None]


def count_key(rule: AlertRule) -> CountKey:
    """The count a rule of a counting kind reads; rules with equal keys share it."""
    kind, minutes = rule.kind, rule.window_minutes
    if kind == "agent_offline":
        return (kind, None, rule.scope_agent_type, None)
    if kind == "lease_expired":
        return (kind, minutes, rule.scope_agent_type, rule.scope_source)
    if kind == "webhook_signature_failures":
        return (kind, minutes, None, rule.scope_source)
    if kind == "index_job_failed":
        return (kind, minutes, None, None)
    raise ValueError(f"rule kind {kind!r} counts nothing")


@dataclass(frozen=True, slots=True)
class Installation:
    platform: str
    token_expires_at: datetime | None
    scopes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class BudgetAlarm:
    """A budget in `warning` or `exceeded`, with the scope a `budget` rule matches."""

    budget_id: str
    agent_type: str | None
    source: str | None


@dataclass(slots=True)
class RoundReads:
    """The figures read for one round; None (or a missing count) where a read failed."""

    now: datetime
    counters: dict[int, dict[Pair, Agg]] | None = None
    # Sums of `counters` per (window, agent type, source) scope, made as rules ask.
    scoped: dict[tuple[int, str | None, str | None], Agg] = field(default_factory=dict)
    p95: dict[int, dict[Scope, float]] | None = None
    counts: dict[CountKey, int] = field(default_factory=dict)
    installations: list[Installation] | None = None
    budgets: list[BudgetAlarm] | None = None


async def read_round(
    session: AsyncSession, rules: Sequence[AlertRule], *, now: datetime, settings: Settings
) -> RoundReads:
    """Everything `rules` (enabled ones) need, in at most three statements."""
    out = RoundReads(now)
    kinds = {r.kind for r in rules}
    counter_minutes = {r.window_minutes for r in rules if r.kind in COUNTER_KINDS}
    if counter_minutes:
        try:
            out.counters = await trailing_counters(session, now=now, minutes=counter_minutes)
        except Exception:
            log.exception("alert rules: the counters of the windows could not be read")
    p95_rules = [r for r in rules if r.kind == "duration_p95_seconds"]
    if p95_rules:
        pairs: set[Pair] = {
            (r.scope_agent_type, r.scope_source)
            for r in p95_rules
            if r.scope_agent_type is not None and r.scope_source is not None
        }
        try:
            out.p95 = await trailing_p95(
                session,
                now=now,
                minutes={r.window_minutes for r in p95_rules},
                pairs=pairs,
            )
        except Exception:
            log.exception("alert rules: the duration percentiles could not be read")
    by_kind: dict[str, list[CountKey]] = {}
    for key in sorted({count_key(r) for r in rules if r.kind in COUNT_KINDS}, key=repr):
        by_kind.setdefault(key[0], []).append(key)
    for kind in ("oauth_expiring", "budget"):
        if kind in kinds:
            by_kind[kind] = []
    if by_kind:
        await _read_counts(session, by_kind, out, settings)
    return out


@dataclass(frozen=True, slots=True)
class _Part:
    """One kind's one-row aggregate: a count per key of the kind, or JSON rows."""

    kind: str
    stmt: Select[Any]


# The statements of the counts by (backend, the kinds and the shape of their keys), built
# once: building and hashing one cost more than running it. Values are bound by name.
_PLANS: dict[tuple[Any, ...], tuple[Select[Any], list[_Part]]] = {}


def _key_shape(key: CountKey) -> tuple[bool, bool]:
    return (key[2] is not None, key[3] is not None)


def _plan(
    session: AsyncSession, by_kind: dict[str, list[CountKey]]
) -> tuple[Select[Any], list[_Part]]:
    """One statement of one row holding every part's columns side by side, and the
    parts alone (read one by one when the whole fails)."""
    shape = (
        dialect_of(session).backend,
        *((kind, tuple(_key_shape(k) for k in keys)) for kind, keys in by_kind.items()),
    )
    plan = _PLANS.get(shape)
    if plan is None:
        parts = [
            _Part(kind, _part_statement(session, kind, keys)) for kind, keys in by_kind.items()
        ]
        subs = [p.stmt.subquery(f"k{i}") for i, p in enumerate(parts)]
        joined: Any = subs[0]
        for sub in subs[1:]:
            joined = joined.join(sub, true())
        whole = select(*(c for sub in subs for c in sub.c)).select_from(joined)
        plan = _PLANS[shape] = (whole, parts)
    return plan


async def _read_counts(
    session: AsyncSession, by_kind: dict[str, list[CountKey]], out: RoundReads, settings: Settings
) -> None:
    """Every part in one statement; if it fails, each part alone."""
    whole, parts = _plan(session, by_kind)
    params = _count_params(by_kind, out.now, settings)
    try:
        row = (await session.execute(whole, params)).one()
        _take(by_kind, list(row), out)
        return
    except Exception:
        log.exception("alert rules: the counts could not be read together; reading each kind")
    for part in parts:
        try:
            values = list((await session.execute(part.stmt, params)).one())
            _take({part.kind: by_kind[part.kind]}, values, out)
        except Exception:
            log.exception("alert rules: the %s figures could not be read", part.kind)


def _take(by_kind: dict[str, list[CountKey]], values: list[Any], out: RoundReads) -> None:
    """Store a row of parts' columns, in the order of `by_kind`."""
    column = iter(values)
    for kind, keys in by_kind.items():
        if kind == "oauth_expiring":
            out.installations = [
                Installation(
                    platform=platform,
                    token_expires_at=_instant(expires),
                    scopes=tuple(_json(scopes) or ()),
                )
                for platform, expires, scopes in _json(next(column)) or ()
            ]
        elif kind == "budget":
            alarms = [BudgetAlarm(*r) for r in _json(next(column)) or ()]
            out.budgets = sorted(alarms, key=lambda b: b.budget_id)
        else:
            for key in keys:
                out.counts[key] = int(next(column) or 0)


def _json(value: Any) -> Any:
    """JSON text as its value (SQLite hands JSON columns inside JSON rows as text)."""
    return orjson.loads(value) if isinstance(value, str | bytes) else value


def _instant(value: str | None) -> datetime | None:
    return None if value is None else to_utc(datetime.fromisoformat(value))


def _count_params(
    by_kind: dict[str, list[CountKey]], now: datetime, settings: Settings
) -> dict[str, Any]:
    """The values of the count statements' parameters: per kind (`{kind}_since`, the
    widest window's start) and per key (`{kind}{i}_since`, `_agent`, `_source`)."""
    params: dict[str, Any] = {
        "agent_offline_cut": now - timedelta(seconds=settings.agent_online_seconds)
    }
    for kind, keys in by_kind.items():
        starts = [now - timedelta(minutes=k[1]) for k in keys if k[1] is not None]
        if starts:
            params[f"{kind}_since"] = min(starts)
            params[f"{kind}_born"] = min(starts) - _MAX_LEASE
        for i, (_, minutes, agent_type, source) in enumerate(keys):
            if minutes is not None:
                params[f"{kind}{i}_since"] = now - timedelta(minutes=minutes)
                params[f"{kind}{i}_born"] = now - timedelta(minutes=minutes) - _MAX_LEASE
            params[f"{kind}{i}_agent"] = agent_type
            params[f"{kind}{i}_source"] = source
    return params


def _part_statement(session: AsyncSession, kind: str, keys: list[CountKey]) -> Select[Any]:
    dialect = dialect_of(session)
    if kind == "oauth_expiring":
        o = OAuthInstallation.__table__.c
        return select(dialect.json_rows_agg([o.platform, o.token_expires_at, o.scopes]))
    if kind == "budget":
        b = Budget.__table__.c
        return select(
            dialect.json_rows_agg([b.budget_id, b.scope_agent_type, b.scope_source])
        ).where(b.state.in_(("warning", "exceeded")))
    conds, base = _COUNTS[kind](kind, keys)
    columns: list[Any] = [func.count(case((c, 1))) for c in conds]
    stmt: Select[Any] = base.with_only_columns(*columns)
    return stmt


Conds = tuple[list[ColumnElement[bool]], Select[Any]]
_TS = Task.__table__.c.created_at.type


def _p(name: str, type_: Any = None) -> Any:
    return bindparam(name, type_=type_)


def _scoped(cond: list[Any], table: Any, kind: str, i: int, key: CountKey) -> ColumnElement[bool]:
    if key[2] is not None:
        cond.append(table.agent_type == _p(f"{kind}{i}_agent"))
    if key[3] is not None:
        cond.append(table.source == _p(f"{kind}{i}_source"))
    return and_(*cond)


def _lease_expired(kind: str, keys: list[CountKey]) -> Conds:
    t = Task.__table__.c
    conds = []
    for i, key in enumerate(keys):
        since, born = _p(f"{kind}{i}_since", _TS), _p(f"{kind}{i}_born", _TS)
        conds.append(_scoped([t.completed_at >= since, t.created_at >= born], t, kind, i, key))
    base = select(t.task_id).where(
        t.status == "failed",
        t.failure_reason == "lease_expired",
        t.created_at >= _p(f"{kind}_born", _TS),
        t.completed_at >= _p(f"{kind}_since", _TS),
    )
    return conds, base


def _signature_failures(kind: str, keys: list[CountKey]) -> Conds:
    w = WebhookEvent.__table__.c
    conds = [
        _scoped([w.received_at >= _p(f"{kind}{i}_since", _TS)], w, kind, i, key)
        for i, key in enumerate(keys)
    ]
    base = select(w.event_id).where(
        w.status == "failed",
        w.received_at >= _p(f"{kind}_since", _TS),
        w.error.in_(SIGNATURE_REJECTIONS),
    )
    return conds, base


def _index_jobs_failed(kind: str, keys: list[CountKey]) -> Conds:
    j = IndexJob.__table__.c
    conds = [j.finished_at >= _p(f"{kind}{i}_since", _TS) for i in range(len(keys))]
    base = select(j.job_id).where(j.status == "failed", j.finished_at >= _p(f"{kind}_since", _TS))
    return conds, base


def _agents_offline(kind: str, keys: list[CountKey]) -> Conds:
    """Agents without a recent heartbeat that have a running task (of the scope's agent
    type)."""
    t = Task.__table__.c
    a = Agent.__table__.c
    conds: list[ColumnElement[bool]] = []
    for i, key in enumerate(keys):
        running = select(t.task_id).where(t.status == "running", t.assigned_agent == a.name)
        if key[2] is not None:
            running = running.where(t.agent_type == _p(f"{kind}{i}_agent"))
        conds.append(running.exists())
    base = select(a.name).where(
        or_(a.last_heartbeat_at.is_(None), a.last_heartbeat_at < _p(f"{kind}_cut", _TS))
    )
    return conds, base


_COUNTS = {
    "lease_expired": _lease_expired,
    "webhook_signature_failures": _signature_failures,
    "index_job_failed": _index_jobs_failed,
    "agent_offline": _agents_offline,
}
