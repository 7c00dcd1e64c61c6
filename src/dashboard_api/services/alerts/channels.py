"""Notification channels: stored with their URL and secret sealed (services/secrets_box).

The URL is sealed too: a Slack incoming-webhook URL is itself the credential. The API
shows scheme, host and port only.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard_api.db.models.guards import AlertChannel, AlertRule
from dashboard_api.errors import Conflict, NotFound
from dashboard_api.schemas.alerts import ChannelIn
from dashboard_api.services.alerts.urls import Target, display_url
from dashboard_api.services.secrets_box import seal, unseal
from dashboard_api.timeutil import format_ts


def channel_document(row: AlertChannel) -> dict[str, Any]:
    return {
        "channel_id": row.channel_id,
        "type": row.type,
        "url": row.url_display,
        "has_secret": row.sealed_secret is not None,
        "created_at": format_ts(row.created_at),
        "updated_at": format_ts(row.updated_at),
    }


async def put_channel(
    session: AsyncSession,
    *,
    channel_id: str,
    body: ChannelIn,
    target: Target,
    key: bytes,
    now: datetime,
) -> dict[str, Any]:
    """Create or replace (`target`: the URL as the SSRF guard accepted it)."""
    row = await session.get(AlertChannel, channel_id)
    if row is None:
        row = AlertChannel(channel_id=channel_id, created_at=now, sealed_secret=None)
        session.add(row)
    row.type = body.type
    row.sealed_url = seal(body.url, key)
    row.url_display = display_url(target)[:300]
    if "secret" in body.model_fields_set:
        row.sealed_secret = seal(body.secret.get_secret_value(), key) if body.secret else None
    row.updated_at = now
    await session.flush()
    return channel_document(row)


async def delete_channel(session: AsyncSession, *, channel_id: str) -> None:
    """Delete a channel that no rule lists (409 names the rules that do). Deliveries to
    it already recorded stay, with their attempts, for the alerts' history; one still
    pending ends at the sender's next run as failed, its attempt recorded as "the
    channel no longer exists"."""
    row = await session.get(AlertChannel, channel_id)
    if row is None:
        raise NotFound(f"No alert channel {channel_id!r}.")
    rules = (await session.execute(select(AlertRule.rule_id, AlertRule.channels))).all()
    users = sorted(rule_id for rule_id, listed in rules if channel_id in listed)
    if users:
        named = ", ".join(repr(r) for r in users[:5]) + (", …" if len(users) > 5 else "")
        raise Conflict(
            f"Alert channel {channel_id!r} is used by the rules {named}: remove it from them first."
        )
    await session.delete(row)
    await session.flush()


async def list_channels(session: AsyncSession) -> list[dict[str, Any]]:
    rows = (await session.scalars(select(AlertChannel).order_by(AlertChannel.channel_id))).all()
    return [channel_document(r) for r in rows]


async def existing_channel_ids(session: AsyncSession, ids: list[str]) -> set[str]:
    if not ids:
        return set()
    found = await session.scalars(
        select(AlertChannel.channel_id).where(AlertChannel.channel_id.in_(ids))
    )
    return set(found.all())


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A channel unsealed for one send (never logged, never returned)."""

    channel_id: str
    type: str
    url: str
    secret: str | None

    def __repr__(self) -> str:
        return f"Endpoint(channel_id={self.channel_id!r}, type={self.type!r})"


class ChannelUnreadable(Exception):
    """The channel's URL or secret was sealed with another key."""


def endpoint_of(row: AlertChannel, key: bytes) -> Endpoint:
    url = unseal(row.sealed_url, key)
    secret = unseal(row.sealed_secret, key) if row.sealed_secret is not None else None
    if url is None or (row.sealed_secret is not None and secret is None):
        raise ChannelUnreadable(
            f"channel {row.channel_id!r} cannot be unsealed with this key; set it again"
        )
    return Endpoint(row.channel_id, row.type, url, secret)


async def get_endpoint(session: AsyncSession, channel_id: str, key: bytes) -> Endpoint:
    row = await session.get(AlertChannel, channel_id)
    if row is None:
        raise NotFound(f"No alert channel {channel_id!r}.")
    return endpoint_of(row, key)
