"""analytics: rollups of task counters and duration histograms per time block

Revision ID: 0002_analytics
Revises: 0001
Create Date: 2026-11-25 18:20:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_analytics"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The table layout as it was at this revision, written out rather than imported: a migration
# must keep doing what it did when later revisions change the application's layout module.
_KEY = ("grain", "bucket", "series", "agent_type", "source", "model")
_COUNTERS = (
    "tasks",
    "queued",
    "running",
    "completed",
    "failed",
    "cancelled",
    "cost_micros",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "duration_sum_us",
    "duration_count",
)


def _key_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("grain", sa.Integer(), nullable=False),
        sa.Column("bucket", sa.BigInteger(), nullable=False),
        sa.Column("series", sa.SmallInteger(), nullable=False),
        sa.Column("agent_type", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=255), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "analytics_rollups",
        *_key_columns(),
        *(sa.Column(c, sa.BigInteger(), nullable=False) for c in _COUNTERS),
        sa.PrimaryKeyConstraint(*_KEY, name=op.f("pk_analytics_rollups")),
    )
    op.create_table(
        "analytics_histograms",
        *_key_columns(),
        sa.Column("kind", sa.SmallInteger(), nullable=False),
        sa.Column("bin", sa.Integer(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(*_KEY, "kind", "bin", name=op.f("pk_analytics_histograms")),
    )


def downgrade() -> None:
    op.drop_table("analytics_histograms")
    op.drop_table("analytics_rollups")
