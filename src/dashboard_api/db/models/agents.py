"""The agent registry: names, descriptions, capabilities and heartbeats."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, CheckConstraint, Index, String, Text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from dashboard_api.db.base import Base

AGENT_REPORTED_STATUSES = ("idle", "busy")
AGENT_STATUSES = ("online", "busy", "offline")


class Agent(Base):
    """A registered agent. Its name is matched against tasks' `agent_type` for its figures."""

    __tablename__ = "agents"
    __table_args__ = (
        CheckConstraint("reported_status IN ('idle','busy')", name="reported_status"),
        CheckConstraint("announced_status IN ('online','busy','offline')", name="announced_status"),
        # "How many agents are online" is a range count on this index.
        Index("ix_agents_last_heartbeat", "last_heartbeat_at"),
    )

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    description: Mapped[str | None] = mapped_column(Text)
    capabilities: Mapped[list[Any]] = mapped_column(
        JSON().with_variant(JSONB(), "postgresql"), default=list
    )
    # What the agent said in its last heartbeat.
    reported_status: Mapped[str] = mapped_column(String(8), default="idle")
    # The status last published on the `agents` channel, so that each transition
    # (online, busy, offline) is announced once whatever the number of replicas.
    announced_status: Mapped[str] = mapped_column(String(8), default="offline")
    registered_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    last_heartbeat_at: Mapped[datetime | None]
