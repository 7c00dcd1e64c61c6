"""integrations: webhook configs and events, OAuth installations, data sources, index jobs

Revision ID: 0004_integrations
Revises: 0001
Create Date: 2026-11-25 18:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import dashboard_api.db.base

revision: str = "0004_integrations"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TS = dashboard_api.db.base.UTCDateTime(timezone=True)
_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
_SUCCESS_WITH_DELIVERY = sa.text("status = 'success' AND delivery_id IS NOT NULL")
_QUEUED = sa.text("status = 'queued'")
_ACTIVE = sa.text("status IN ('queued','running')")


def upgrade() -> None:
    op.create_table(
        "webhook_configs",
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        # Sealed (services/secrets_box.py), never the clear secret.
        sa.Column("secret", sa.Text(), nullable=True),
        sa.Column("updated_at", _TS, nullable=False),
        sa.CheckConstraint(
            "source IN ('github','jira','slack')", name=op.f("ck_webhook_configs_source")
        ),
        sa.PrimaryKeyConstraint("source", name=op.f("pk_webhook_configs")),
    )

    op.create_table(
        "webhook_events",
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("event_type", sa.String(length=255), nullable=False),
        sa.Column("delivery_id", sa.String(length=255), nullable=True),
        sa.Column("status", sa.String(length=8), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("received_at", _TS, nullable=False),
        sa.Column("payload_bytes", sa.Integer(), nullable=False),
        sa.Column("payload", _JSON, nullable=True),
        sa.Column("task_id", sa.String(length=255), nullable=True),
        sa.CheckConstraint("status IN ('success','failed')", name=op.f("ck_webhook_events_status")),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_webhook_events")),
    )
    op.create_index("ix_webhook_events_received", "webhook_events", ["received_at", "event_id"])
    op.create_index(
        "ix_webhook_events_source_received",
        "webhook_events",
        ["source", "received_at", "event_id"],
    )
    op.create_index(
        "ix_webhook_events_status_received",
        "webhook_events",
        ["status", "received_at", "event_id"],
    )
    op.create_index(
        "ux_webhook_events_delivery",
        "webhook_events",
        ["source", "delivery_id"],
        unique=True,
        postgresql_where=_SUCCESS_WITH_DELIVERY,
        sqlite_where=_SUCCESS_WITH_DELIVERY,
    )

    op.create_table(
        "oauth_installations",
        sa.Column("installation_id", sa.String(length=36), nullable=False),
        sa.Column("platform", sa.String(length=16), nullable=False),
        sa.Column("organization", sa.String(length=255), nullable=False),
        sa.Column("scopes", _JSON, nullable=False),
        sa.Column("token_expires_at", _TS, nullable=True),
        sa.Column("installed_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.CheckConstraint(
            "platform IN ('github','jira','slack')", name=op.f("ck_oauth_installations_platform")
        ),
        sa.PrimaryKeyConstraint("installation_id", name=op.f("pk_oauth_installations")),
    )
    op.create_index(
        "ux_oauth_installations_platform_org",
        "oauth_installations",
        ["platform", "organization"],
        unique=True,
    )

    op.create_table(
        "data_sources",
        sa.Column("source_id", sa.String(length=36), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("config", _JSON, nullable=False),
        sa.Column("identity", sa.String(length=700), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("last_indexed_at", _TS, nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.CheckConstraint(
            "type IN ('github_repo','jira_project','confluence_space')",
            name=op.f("ck_data_sources_type"),
        ),
        sa.CheckConstraint(
            "status IN ('pending','indexing','ready','failed')",
            name=op.f("ck_data_sources_status"),
        ),
        sa.PrimaryKeyConstraint("source_id", name=op.f("pk_data_sources")),
        sa.UniqueConstraint("identity", name=op.f("uq_data_sources_identity")),
    )
    op.create_index("ix_data_sources_created", "data_sources", ["created_at", "source_id"])

    op.create_table(
        "index_jobs",
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("source_id", sa.String(length=36), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("agent", sa.String(length=255), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("started_at", _TS, nullable=True),
        sa.Column("finished_at", _TS, nullable=True),
        sa.Column("updated_at", _TS, nullable=False),
        sa.CheckConstraint(
            "status IN ('queued','running','succeeded','failed','cancelled')",
            name=op.f("ck_index_jobs_status"),
        ),
        sa.CheckConstraint("progress >= 0 AND progress <= 1", name=op.f("ck_index_jobs_progress")),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_index_jobs")),
    )
    op.create_index(
        "ix_index_jobs_source_created", "index_jobs", ["source_id", "created_at", "job_id"]
    )
    op.create_index(
        "ix_index_jobs_queue",
        "index_jobs",
        ["created_at", "job_id"],
        postgresql_where=_QUEUED,
        sqlite_where=_QUEUED,
    )
    op.create_index(
        "ux_index_jobs_active_source",
        "index_jobs",
        ["source_id"],
        unique=True,
        postgresql_where=_ACTIVE,
        sqlite_where=_ACTIVE,
    )


def downgrade() -> None:
    op.drop_table("index_jobs")
    op.drop_table("data_sources")
    op.drop_table("oauth_installations")
    op.drop_table("webhook_events")
    op.drop_table("webhook_configs")
