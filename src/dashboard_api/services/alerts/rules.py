"""Alert rule definitions."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard_api.db.dialect import dialect_of
from dashboard_api.db.models.guards import AlertRule
from dashboard_api.errors import NotFound, Unprocessable
from dashboard_api.schemas.alerts import RuleIn
from dashboard_api.services.alerts.channels import existing_channel_ids
from dashboard_api.services.alerts.evaluate import resolve_for
from dashboard_api.services.alerts.kinds import UNAVAILABLE_KINDS
from dashboard_api.settings import Settings
from dashboard_api.timeutil import format_ts


def rule_scope(row: AlertRule) -> dict[str, str]:
    return {
        k: v
        for k, v in (("agent_type", row.scope_agent_type), ("source", row.scope_source))
        if v is not None
    }


def rule_document(row: AlertRule) -> dict[str, Any]:
    return {
        "rule_id": row.rule_id,
        "name": row.name,
        "kind": row.kind,
        "scope": rule_scope(row),
        "window_minutes": row.window_minutes,
        "threshold": row.threshold,
        "channels": list(row.channels),
        "enabled": row.enabled,
        "created_at": format_ts(row.created_at),
        "updated_at": format_ts(row.updated_at),
    }


async def put_rule(
    session: AsyncSession, *, rule_id: str, body: RuleIn, now: datetime
) -> dict[str, Any]:
    """Create or replace. An open alert of the rule stays open: the next evaluation
    resolves it if the new definition no longer holds."""
    if body.kind in UNAVAILABLE_KINDS:
        raise Unprocessable(UNAVAILABLE_KINDS[body.kind], loc=["body", "kind"])
    channels = list(dict.fromkeys(body.channels))
    missing = sorted(set(channels) - await existing_channel_ids(session, channels))
    if missing:
        raise Unprocessable(f"No alert channel {missing[0]!r}.", loc=["body", "channels"])
    row = await session.get(AlertRule, rule_id)
    if row is None:
        row = AlertRule(rule_id=rule_id, created_at=now)
        session.add(row)
    row.name, row.kind = body.name, body.kind
    row.scope_agent_type = body.scope.agent_type if body.scope else None
    row.scope_source = body.scope.source if body.scope else None
    row.window_minutes, row.threshold = body.window_minutes, body.threshold
    row.channels, row.enabled, row.updated_at = channels, body.enabled, now
    await session.flush()
    return rule_document(row)


async def delete_rule(
    session: AsyncSession, *, rule_id: str, now: datetime, settings: Settings
) -> None:
    """Delete a rule. Its open alert, if any, resolves ("the rule was deleted") and
    notifies its channels once, in the same transaction; its alerts and their deliveries
    stay, as the history they are. The rule's row is locked first: an evaluation round
    opening an alert for it meanwhile either finished before (its alert is resolved
    here) or waits and then finds the rule gone (no alert)."""
    stmt = select(AlertRule).where(AlertRule.rule_id == rule_id)
    row = (await session.scalars(dialect_of(session).lock_for_update(stmt))).first()
    if row is None:
        raise NotFound(f"No alert rule {rule_id!r}.")
    await resolve_for(session, row, why="the rule was deleted", now=now, settings=settings)
    await session.delete(row)
    await session.flush()


async def list_rules(session: AsyncSession) -> list[dict[str, Any]]:
    rows = (await session.scalars(select(AlertRule).order_by(AlertRule.rule_id))).all()
    return [rule_document(r) for r in rows]
