"""budgets, alert rules, notification channels, alerts and the delivery outbox

Revision ID: 0014_guards
Revises: 0013_otlp_spans
Create Date: 2026-12-07 13:30:00.000000

New tables only (docs/api.md §14 and §15), plus an index that the `index_job_failed` rule
reads (failed jobs by finish time). Nothing existing is rewritten.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0014_guards"
down_revision: str | Sequence[str] | None = "0013_otlp_spans"
branch_labels: str | Sequence[str] | None = None
# index_jobs (the index of the `index_job_failed` rule) comes from that branch.
depends_on: str | Sequence[str] | None = "0004_integrations"

_TS = sa.DateTime(timezone=True)
_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "budgets",
        sa.Column("budget_id", sa.String(255), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("scope_agent_type", sa.String(64), nullable=True),
        sa.Column("scope_user_id", sa.String(255), nullable=True),
        sa.Column("scope_source", sa.String(64), nullable=True),
        sa.Column("scope_flow_id", sa.String(255), nullable=True),
        sa.Column("period", sa.String(8), nullable=False),
        sa.Column("tz", sa.String(64), nullable=False),
        sa.Column("limit_micros", sa.BigInteger(), nullable=False),
        sa.Column("warn_at", _JSON, nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("state_period_start", _TS, nullable=True),
        sa.Column("held_until", _TS, nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.CheckConstraint("period IN ('day','week','month')", name=op.f("ck_budgets_period")),
        sa.CheckConstraint(
            "action IN ('notify','hold','hold_and_cancel')", name=op.f("ck_budgets_action")
        ),
        sa.CheckConstraint("state IN ('ok','warning','exceeded')", name=op.f("ck_budgets_state")),
        sa.CheckConstraint("limit_micros >= 0", name=op.f("ck_budgets_limit_micros")),
        sa.PrimaryKeyConstraint("budget_id", name=op.f("pk_budgets")),
    )
    op.create_table(
        "alert_channels",
        sa.Column("channel_id", sa.String(255), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("sealed_url", sa.Text(), nullable=False),
        sa.Column("url_display", sa.String(300), nullable=False),
        sa.Column("sealed_secret", sa.Text(), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.CheckConstraint("type IN ('webhook','slack')", name=op.f("ck_alert_channels_type")),
        sa.PrimaryKeyConstraint("channel_id", name=op.f("pk_alert_channels")),
    )
    op.create_table(
        "alert_rules",
        sa.Column("rule_id", sa.String(255), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("scope_agent_type", sa.String(64), nullable=True),
        sa.Column("scope_source", sa.String(64), nullable=True),
        sa.Column("window_minutes", sa.Integer(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("channels", _JSON, nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("rule_id", name=op.f("pk_alert_rules")),
    )
    op.create_table(
        "alerts",
        sa.Column("alert_id", sa.String(36), nullable=False),
        sa.Column("rule_id", sa.String(255), nullable=False),
        sa.Column("rule_name", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("started_at", _TS, nullable=False),
        sa.Column("resolved_at", _TS, nullable=True),
        sa.CheckConstraint("state IN ('firing','resolved')", name=op.f("ck_alerts_state")),
        sa.PrimaryKeyConstraint("alert_id", name=op.f("pk_alerts")),
    )
    op.create_index("ix_alerts_started", "alerts", ["started_at", "alert_id"])
    op.create_index("ix_alerts_state_started", "alerts", ["state", "started_at", "alert_id"])
    firing = sa.text("state = 'firing'")
    op.create_index(
        "ux_alerts_rule_firing",
        "alerts",
        ["rule_id"],
        unique=True,
        postgresql_where=firing,
        sqlite_where=firing,
    )
    op.create_table(
        "alert_deliveries",
        sa.Column("delivery_id", sa.String(36), nullable=False),
        sa.Column("alert_id", sa.String(36), nullable=False),
        sa.Column("channel_id", sa.String(255), nullable=False),
        sa.Column("event", sa.String(16), nullable=False),
        sa.Column("document", _JSON, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", _TS, nullable=False),
        sa.Column("give_up_at", _TS, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.CheckConstraint(
            "state IN ('pending','delivered','failed')", name=op.f("ck_alert_deliveries_state")
        ),
        sa.CheckConstraint(
            "event IN ('firing','resolved','test')", name=op.f("ck_alert_deliveries_event")
        ),
        sa.PrimaryKeyConstraint("delivery_id", name=op.f("pk_alert_deliveries")),
    )
    op.create_index("ix_alert_deliveries_alert", "alert_deliveries", ["alert_id", "created_at"])
    pending = sa.text("state = 'pending'")
    op.create_index(
        "ix_alert_deliveries_due",
        "alert_deliveries",
        ["next_attempt_at"],
        postgresql_where=pending,
        sqlite_where=pending,
    )
    op.create_table(
        "alert_delivery_attempts",
        sa.Column("delivery_id", sa.String(36), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("alert_id", sa.String(36), nullable=False),
        sa.Column("channel_id", sa.String(255), nullable=False),
        sa.Column("at", _TS, nullable=False),
        sa.Column("finished_at", _TS, nullable=True),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("response_excerpt", sa.String(512), nullable=True),
        sa.PrimaryKeyConstraint("delivery_id", "attempt", name=op.f("pk_alert_delivery_attempts")),
    )
    op.create_index(
        "ix_alert_delivery_attempts_alert", "alert_delivery_attempts", ["alert_id", "at"]
    )
    op.create_index("ix_index_jobs_status_finished", "index_jobs", ["status", "finished_at"])


def downgrade() -> None:
    op.drop_index("ix_index_jobs_status_finished", table_name="index_jobs")
    op.drop_table("alert_delivery_attempts")
    op.drop_table("alert_deliveries")
    op.drop_table("alerts")
    op.drop_table("alert_rules")
    op.drop_table("alert_channels")
    op.drop_table("budgets")
