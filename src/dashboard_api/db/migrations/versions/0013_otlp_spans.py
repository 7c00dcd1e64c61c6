"""otlp_spans: spans of OpenTelemetry traces kept while their invocations are assembled

Revision ID: 0013_otlp_spans
Revises: 0010_search
Create Date: 2026-12-07 13:40:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import dashboard_api.db.base

revision: str = "0013_otlp_spans"
down_revision: str | Sequence[str] | None = "0010_search"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "otlp_spans",
        sa.Column("trace_id", sa.String(length=32), nullable=False),
        sa.Column("span_id", sa.String(length=16), nullable=False),
        sa.Column("task_id", sa.String(length=255), nullable=True),
        sa.Column("batch", sa.BigInteger(), nullable=False),
        sa.Column("received_at", dashboard_api.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("facts", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("trace_id", "span_id", name=op.f("pk_otlp_spans")),
    )
    op.create_index("ix_otlp_spans_received_at", "otlp_spans", ["received_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_otlp_spans_received_at", table_name="otlp_spans")
    op.drop_table("otlp_spans")
