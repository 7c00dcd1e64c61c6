"""One evaluation round of the alert rules (a periodic job, one replica at a time).

Each enabled rule is measured (`kinds.measure`); a rule that holds without an open
alert opens one, an open alert whose rule no longer holds (or was disabled) resolves.
Nothing happens while the state holds, so a rule notifies once when it starts holding
and once when it stops. Each transition, its deliveries (the outbox) and its `alert`
event are written in one transaction. Opening is an insert that the unique index of
open alerts per rule refuses a second time, and resolving is a conditional update, so
even two overlapping rounds make each transition once.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from types import SimpleNamespace
from typing import Any

from sqlalchemy import Select, Table, and_, bindparam, literal, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard_api.db.dialect import dialect_of
from dashboard_api.db.engine import Database, emit
from dashboard_api.db.models.guards import Alert, AlertRule
from dashboard_api.ids import new_id
from dashboard_api.services.alerts.kinds import ROLLUP_KINDS, Measure, measure
from dashboard_api.services.alerts.outbox import enqueue
from dashboard_api.services.alerts.reads import RoundReads, read_round
from dashboard_api.services.analytics.fold import fold_pending, newest_pending_sql
from dashboard_api.settings import Settings
from dashboard_api.timeutil import format_ts

log = logging.getLogger(__name__)

ALERTS_CHANNEL = "alerts"
_AL: Table = Alert.__table__  # type: ignore[assignment]
_RULES_TABLE: Table = AlertRule.__table__  # type: ignore[assignment]


def alert_document(row: Any) -> dict[str, Any]:
    """The alert as docs/api.md §15 shows it (also the body of a webhook notification)."""
    return {
        "alert_id": row.alert_id,
        "rule_id": row.rule_id,
        "rule_name": row.rule_name,
        "kind": row.kind,
        "state": row.state,
        "value": row.value,
        "threshold": row.threshold,
        "summary": row.summary,
        "started_at": format_ts(row.started_at),
        "resolved_at": format_ts(row.resolved_at) if row.resolved_at is not None else None,
    }


@dataclass(frozen=True, slots=True)
class Transition:
    rule: AlertRule
    measure: Measure | None  # None: resolve for `why` (the rule is disabled, or deleted)
    open_alert: Alert | None  # the alert to resolve; None: open one
    why: str = "the rule was disabled"


def _announce(
    session: AsyncSession,
    doc: dict[str, Any],
    rule: AlertRule,
    *,
    now: datetime,
    settings: Settings,
) -> None:
    emit(session, ALERTS_CHANNEL, {"type": "alert", "alert": doc})
    enqueue(
        session,
        alert_id=doc["alert_id"],
        document=doc,
        channel_ids=list(rule.channels),
        event=doc["state"],
        now=now,
        settings=settings,
    )


async def _open(
    session: AsyncSession, t: Transition, now: datetime, settings: Settings
) -> dict[str, Any] | None:
    assert t.measure is not None
    values = {
        "alert_id": new_id(),
        "rule_id": t.rule.rule_id,
        "rule_name": t.rule.name,
        "kind": t.rule.kind,
        "state": "firing",
        "value": float(t.measure.value),
        "threshold": t.rule.threshold,
        "summary": t.measure.summary,
        "started_at": now,
        "resolved_at": None,
    }
    # Inserted only while the rule exists, holding its row (FOR SHARE on PostgreSQL): a
    # rule deleted meanwhile (`rules.delete_rule` locks it) leaves no alert behind it.
    rule = select(*(literal(v, _AL.c[k].type) for k, v in values.items())).where(
        _RULES_TABLE.c.rule_id == t.rule.rule_id
    )
    stmt = (
        dialect_of(session)
        .insert(_AL)
        .from_select(list(values), rule.with_for_update(read=True))
        .on_conflict_do_nothing(index_elements=["rule_id"], index_where=text("state = 'firing'"))
        .returning(_AL.c.alert_id)
    )
    if (await session.execute(stmt)).first() is None:
        return None  # another round opened it, or the rule is gone
    doc = alert_document(SimpleNamespace(**values))
    _announce(session, doc, t.rule, now=now, settings=settings)
    return doc


async def _resolve(
    session: AsyncSession, t: Transition, now: datetime, settings: Settings
) -> dict[str, Any] | None:
    assert t.open_alert is not None
    summary = t.measure.summary if t.measure is not None else t.why
    row = (
        await session.execute(
            update(_AL)
            .where(_AL.c.alert_id == t.open_alert.alert_id, _AL.c.state == "firing")
            .values(state="resolved", resolved_at=now, summary=f"resolved: {summary}")
            .returning(*_AL.c)
        )
    ).first()
    if row is None:
        return None  # another round resolved it
    doc = alert_document(row)
    _announce(session, doc, t.rule, now=now, settings=settings)
    return doc


async def resolve_for(
    session: AsyncSession, rule: AlertRule, *, why: str, now: datetime, settings: Settings
) -> dict[str, Any] | None:
    """Resolve the rule's open alert, if any, in the caller's transaction (notifying its
    channels once, as any resolution): the alert document, or None."""
    alert = (
        await session.scalars(
            select(Alert).where(Alert.rule_id == rule.rule_id, Alert.state == "firing")
        )
    ).first()
    if alert is None:
        return None
    return await _resolve(session, Transition(rule, None, alert, why), now, settings)


def _rules_statement(some_kinds: bool) -> Select[Any]:
    """The rules (of the kinds bound as `kinds`) with their open alert, and the newest
    contribution waiting to be folded into the rollups."""
    stmt = (
        select(AlertRule, Alert, newest_pending_sql())
        .outerjoin(Alert, and_(Alert.rule_id == AlertRule.rule_id, Alert.state == "firing"))
        .order_by(AlertRule.rule_id)
    )
    if some_kinds:
        stmt = stmt.where(AlertRule.kind.in_(bindparam("kinds", expanding=True)))
    return stmt


_RULES = {some: _rules_statement(some) for some in (False, True)}


async def _rules_and_alerts(
    session: AsyncSession, kinds: Collection[str] | None
) -> tuple[list[tuple[AlertRule, Alert | None]], int | None]:
    """The rules (of `kinds`) with their open alert, and the newest contribution waiting
    to be folded into the rollups: one statement."""
    params = {} if kinds is None else {"kinds": list(kinds)}
    rows = (await session.execute(_RULES[kinds is not None], params)).all()
    newest = rows[0][2] if rows else None
    return [(rule, alert) for rule, alert, _ in rows], newest


def _transitions(
    rules: list[tuple[AlertRule, Alert | None]], reads: RoundReads, settings: Settings
) -> list[Transition]:
    out: list[Transition] = []
    for rule, current in rules:
        if not rule.enabled:
            if current is not None:
                out.append(Transition(rule, None, current))
            continue
        try:
            m = measure(rule, reads, settings)
        except Exception:
            # One rule's failure must not stop the others; its state stays as it is.
            log.exception("alert rule %s could not be evaluated", rule.rule_id)
            continue
        if m is None:
            continue  # its figures could not be read (logged): its state stays
        if m.holds and current is None:
            out.append(Transition(rule, m, None))
        elif not m.holds and current is not None:
            out.append(Transition(rule, m, current))
    return out


async def evaluate_rules(
    db: Database,
    settings: Settings,
    *,
    now: datetime,
    kinds: Collection[str] | None = None,
) -> list[dict[str, Any]]:
    """One round (of the rules of `kinds`, default all); the alert documents that changed.

    A round reads in a fixed number of statements whatever the number of rules: the rules
    with their open alerts, then every figure they need (`reads.read_round`)."""
    async with db.read_statements() as session:
        rules, newest = await _rules_and_alerts(session, kinds)
        enabled = [rule for rule, _ in rules if rule.enabled]
        if newest is not None and any(r.kind in ROLLUP_KINDS for r in enabled):
            # Every write acknowledged before the round counts (as for analytics reads).
            await fold_pending(db, wait=True, upto=int(newest))
            # SQLite: a new snapshot that sees the fold (the rules, detached first, keep
            # what they loaded: a rollback would expire them).
            session.expunge_all()
            await session.rollback()
        reads = await read_round(session, enabled, now=now, settings=settings)
    transitions = _transitions(rules, reads, settings)
    if not transitions:
        return []
    changed: list[dict[str, Any]] = []
    async with db.write() as session:
        for t in transitions:
            doc = await (_resolve if t.open_alert is not None else _open)(session, t, now, settings)
            if doc is not None:
                changed.append(doc)
    return changed
