"""Budgets, alert rules, notification channels, alerts and their delivery outbox."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, CheckConstraint, Float, Index, Integer, String, Text
from sqlalchemy import text as sql_text
from sqlalchemy.orm import Mapped, mapped_column

from dashboard_api.db.base import Base, JSONDoc

BUDGET_PERIODS = ("day", "week", "month")
BUDGET_ACTIONS = ("notify", "hold", "hold_and_cancel")
BUDGET_STATES = ("ok", "warning", "exceeded")
CHANNEL_TYPES = ("webhook", "slack")
ALERT_STATES = ("firing", "resolved")
DELIVERY_STATES = ("pending", "delivered", "failed")


class Budget(Base):
    """A spending cap over a scope and a calendar period (docs/api.md §14).

    `state` is the state last announced on the `budgets` channel, for the period that
    starts at `state_period_start`; `held_until` is set (to the end of that period) while
    a `hold` budget is exceeded, and the claim statement skips queued tasks in its scope
    while it lies in the future (services/budgets/holds.py)."""

    __tablename__ = "budgets"
    __table_args__ = (
        CheckConstraint("period IN ('day','week','month')", name="period"),
        CheckConstraint("action IN ('notify','hold','hold_and_cancel')", name="action"),
        CheckConstraint("state IN ('ok','warning','exceeded')", name="state"),
        CheckConstraint("limit_micros >= 0", name="limit_micros"),
    )

    budget_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    scope_agent_type: Mapped[str | None] = mapped_column(String(64))
    scope_user_id: Mapped[str | None] = mapped_column(String(255))
    scope_source: Mapped[str | None] = mapped_column(String(64))
    scope_flow_id: Mapped[str | None] = mapped_column(String(255))
    period: Mapped[str] = mapped_column(String(8))
    tz: Mapped[str] = mapped_column(String(64))
    limit_micros: Mapped[int] = mapped_column(BigInteger)
    warn_at: Mapped[list[float]] = mapped_column(JSONDoc)
    action: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), default="ok")
    state_period_start: Mapped[datetime | None]
    held_until: Mapped[datetime | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class AlertChannel(Base):
    """Where notifications go. The URL (Slack's carries its credential) and the signing
    secret are sealed by services/secrets_box before they reach the database."""

    __tablename__ = "alert_channels"
    __table_args__ = (CheckConstraint("type IN ('webhook','slack')", name="type"),)

    channel_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    type: Mapped[str] = mapped_column(String(16))
    sealed_url: Mapped[str] = mapped_column(Text)
    # scheme://host[:port]/… : what the API shows of the URL.
    url_display: Mapped[str] = mapped_column(String(300))
    sealed_secret: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    def __repr__(self) -> str:
        return f"AlertChannel(channel_id={self.channel_id!r}, type={self.type!r})"


class AlertRule(Base):
    """A condition over the fleet's health, evaluated periodically (docs/api.md §15)."""

    __tablename__ = "alert_rules"

    rule_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(40))
    scope_agent_type: Mapped[str | None] = mapped_column(String(64))
    scope_source: Mapped[str | None] = mapped_column(String(64))
    window_minutes: Mapped[int] = mapped_column(Integer)
    threshold: Mapped[float] = mapped_column(Float)
    channels: Mapped[list[str]] = mapped_column(JSONDoc)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class Alert(Base):
    """One episode of a rule holding: opened firing, closed resolved."""

    __tablename__ = "alerts"
    __table_args__ = (
        CheckConstraint("state IN ('firing','resolved')", name="state"),
        Index("ix_alerts_started", "started_at", "alert_id"),
        Index("ix_alerts_state_started", "state", "started_at", "alert_id"),
        # At most one open alert per rule, whoever evaluates: a second opening is refused
        # by the database, not only by the single-leader job.
        Index(
            "ux_alerts_rule_firing",
            "rule_id",
            unique=True,
            postgresql_where=sql_text("state = 'firing'"),
            sqlite_where=sql_text("state = 'firing'"),
        ),
    )

    alert_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    rule_id: Mapped[str] = mapped_column(String(255))
    rule_name: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(40))
    state: Mapped[str] = mapped_column(String(16))
    value: Mapped[float] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)
    summary: Mapped[str] = mapped_column(Text)
    started_at: Mapped[datetime]
    resolved_at: Mapped[datetime | None]


class AlertDelivery(Base):
    """The outbox: one notification of one alert transition to one channel, written in
    the transaction that opened or resolved the alert, sent after it commits."""

    __tablename__ = "alert_deliveries"
    __table_args__ = (
        CheckConstraint("state IN ('pending','delivered','failed')", name="state"),
        CheckConstraint("event IN ('firing','resolved','test')", name="event"),
        Index("ix_alert_deliveries_alert", "alert_id", "created_at"),
        # What the sender claims: pending rows whose next attempt is due.
        Index(
            "ix_alert_deliveries_due",
            "next_attempt_at",
            postgresql_where=sql_text("state = 'pending'"),
            sqlite_where=sql_text("state = 'pending'"),
        ),
    )

    delivery_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    alert_id: Mapped[str] = mapped_column(String(36))
    channel_id: Mapped[str] = mapped_column(String(255))
    event: Mapped[str] = mapped_column(String(16))
    # The alert document as it was at the transition (the webhook body).
    document: Mapped[dict[str, Any]] = mapped_column(JSONDoc)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime]
    # Retries stop after this instant (at least 10 minutes after creation).
    give_up_at: Mapped[datetime]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class AlertDeliveryAttempt(Base):
    """One send. Written (committed) before the request goes out, completed after: a send
    interrupted by a crash keeps its record, without an outcome."""

    __tablename__ = "alert_delivery_attempts"
    __table_args__ = (Index("ix_alert_delivery_attempts_alert", "alert_id", "at"),)

    delivery_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True)
    alert_id: Mapped[str] = mapped_column(String(36))
    channel_id: Mapped[str] = mapped_column(String(255))
    at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    response_excerpt: Mapped[str | None] = mapped_column(String(512))
