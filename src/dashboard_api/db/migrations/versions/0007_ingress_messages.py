"""ingress_messages: ids of Redis producer messages already stored (exactly once)

Revision ID: 0007_ingress_messages
Revises: 0001
Create Date: 2026-11-25 20:45:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import dashboard_api.db.base

revision: str = "0007_ingress_messages"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "ingress_messages",
        sa.Column("task_id", sa.String(length=255), nullable=False),
        sa.Column("message_id", sa.String(length=200), nullable=False),
        sa.Column("stored_at", dashboard_api.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("task_id", "message_id", name=op.f("pk_ingress_messages")),
    )
    op.create_index(
        "ix_ingress_messages_stored_at", "ingress_messages", ["stored_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_ingress_messages_stored_at", table_name="ingress_messages")
    op.drop_table("ingress_messages")
