"""Reading alerts and their delivery attempts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard_api.db.models.guards import Alert, AlertDelivery, AlertDeliveryAttempt
from dashboard_api.db.paging import Ordering, PageRequest, PageResult, paginate
from dashboard_api.errors import NotFound
from dashboard_api.services.alerts.evaluate import alert_document
from dashboard_api.timeutil import format_ts

_NEWEST_FIRST = Ordering("-started_at", (Alert.started_at, Alert.alert_id), descending=True)


async def list_alerts(
    session: AsyncSession, *, states: Sequence[str], page: PageRequest
) -> PageResult[dict[str, Any]]:
    stmt: Select[Any] = select(Alert)
    count_stmt = select(func.count()).select_from(Alert)
    if states:
        stmt = stmt.where(Alert.state.in_(list(states)))
        count_stmt = count_stmt.where(Alert.state.in_(list(states)))
    return await paginate(
        session,
        stmt,
        _NEWEST_FIRST,
        page,
        convert=lambda row: alert_document(row[0]),
        count_stmt=count_stmt,
    )


async def list_attempts(session: AsyncSession, *, alert_id: str) -> list[dict[str, Any]]:
    """Every attempt of every delivery of the alert, oldest first."""
    if await session.get(Alert, alert_id) is None:
        raise NotFound(f"No alert {alert_id!r}.")
    a, d = AlertDeliveryAttempt, AlertDelivery
    rows = await session.execute(
        select(a, d.event, d.state)
        .join(d, d.delivery_id == a.delivery_id)
        .where(a.alert_id == alert_id)
        .order_by(a.at, a.delivery_id, a.attempt)
    )
    return [
        {
            "attempt": att.attempt,
            "at": format_ts(att.at),
            "status_code": att.status_code,
            "error": att.error,
            "delivery_id": att.delivery_id,
            "channel_id": att.channel_id,
            "event": event,
            "delivery_state": state,
            "response_excerpt": att.response_excerpt,
        }
        for att, event, state in rows
    ]
