"""analytics_pending: task writes' rollup contributions, folded into the rollups in batches

Revision ID: 0009_analytics_pending
Revises: 0006_analytics_marginals
Create Date: 2026-11-25 23:55:00.000000

Task writes used to add their deltas to the rollup rows in their own transaction, so
every concurrent write of the current time blocks queued on the same rows until the
previous one committed. They now append to this table, and a fold moves the rows into
the rollups in batches (`services/analytics/fold.py`). Nothing to migrate: the rollups
are complete when this table is created empty.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_analytics_pending"
down_revision: str | Sequence[str] | None = "0006_analytics_marginals"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "analytics_pending",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("sign", sa.SmallInteger(), nullable=False),
        sa.Column("created_s", sa.BigInteger(), nullable=False),
        sa.Column("agent_type", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=255), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("cost_micros", sa.BigInteger(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_read_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_write_tokens", sa.BigInteger(), nullable=False),
        sa.Column("duration_us", sa.BigInteger(), nullable=True),
        sa.Column("first_output_us", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_analytics_pending")),
    )
    op.create_index(
        "ix_analytics_pending_created_s", "analytics_pending", ["created_s"], unique=False
    )


def downgrade() -> None:
    # Fold first (`dashboard-api rollups rebuild` after a downgrade does it too): rows
    # still here are contributions the rollups do not hold yet.
    op.drop_index("ix_analytics_pending_created_s", table_name="analytics_pending")
    op.drop_table("analytics_pending")
