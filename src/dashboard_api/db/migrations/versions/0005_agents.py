"""agents: the agent registry and its heartbeats

Revision ID: 0005_agents
Revises: 0001
Create Date: 2026-11-25 18:20:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import dashboard_api.db.base

revision: str = "0005_agents"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "agents",
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column(
            "capabilities",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("reported_status", sa.String(length=8), nullable=False),
        sa.Column("announced_status", sa.String(length=8), nullable=False),
        sa.Column(
            "registered_at", dashboard_api.db.base.UTCDateTime(timezone=True), nullable=False
        ),
        sa.Column("updated_at", dashboard_api.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column(
            "last_heartbeat_at", dashboard_api.db.base.UTCDateTime(timezone=True), nullable=True
        ),
        sa.CheckConstraint(
            "reported_status IN ('idle','busy')", name=op.f("ck_agents_reported_status")
        ),
        sa.CheckConstraint(
            "announced_status IN ('online','busy','offline')",
            name=op.f("ck_agents_announced_status"),
        ),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_agents")),
    )
    op.create_index("ix_agents_last_heartbeat", "agents", ["last_heartbeat_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_agents_last_heartbeat", table_name="agents")
    op.drop_table("agents")
