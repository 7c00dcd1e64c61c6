"""Webhook sources' settings and every delivery received or recorded."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, CheckConstraint, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from dashboard_api.db.base import Base, JSONDoc

WEBHOOK_SOURCES = ("github", "jira", "slack")
WEBHOOK_STATUSES = ("success", "failed")


class WebhookConfig(Base):
    """One row per provider once an admin has configured it (defaults otherwise)."""

    __tablename__ = "webhook_configs"
    __table_args__ = (CheckConstraint("source IN ('github','jira','slack')", name="source"),)

    source: Mapped[str] = mapped_column(String(16), primary_key=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    # The secret sealed by services/secrets_box (never the clear value, so that neither SQL
    # logs nor database dumps show it).
    sealed_secret: Mapped[str | None] = mapped_column("secret", Text)
    updated_at: Mapped[datetime]

    def __repr__(self) -> str:  # the default would be harmless, but be explicit
        return f"WebhookConfig(source={self.source!r}, enabled={self.enabled!r})"


class WebhookEvent(Base):
    """A delivery: received through `/receive` or recorded by an agent."""

    __tablename__ = "webhook_events"
    __table_args__ = (
        CheckConstraint("status IN ('success','failed')", name="status"),
        Index("ix_webhook_events_received", "received_at", "event_id"),
        Index("ix_webhook_events_source_received", "source", "received_at", "event_id"),
        Index("ix_webhook_events_status_received", "status", "received_at", "event_id"),
        # Idempotency: one successful delivery per provider delivery id. Failed attempts
        # (bad signature, disabled source) do not count, so the provider's retry works.
        Index(
            "ux_webhook_events_delivery",
            "source",
            "delivery_id",
            unique=True,
            postgresql_where=text("status = 'success' AND delivery_id IS NOT NULL"),
            sqlite_where=text("status = 'success' AND delivery_id IS NOT NULL"),
        ),
    )

    event_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    source: Mapped[str] = mapped_column(String(16))
    event_type: Mapped[str] = mapped_column(String(255))
    delivery_id: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(8))
    error: Mapped[str | None] = mapped_column(Text)
    received_at: Mapped[datetime]
    payload_bytes: Mapped[int] = mapped_column(Integer, default=0)
    # Any JSON value (an agent may record a list); the receive path stores objects.
    payload: Mapped[Any | None] = mapped_column(JSONDoc)
    task_id: Mapped[str | None] = mapped_column(String(255))
