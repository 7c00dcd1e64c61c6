"""analytics: per-block change counters (`changes`) and the rebuild count, for q counts

Revision ID: 0010_search
Revises: 0009_analytics_pending
Create Date: 2026-11-26 03:30:00.000000

A task list with `q` counts its matches per hour block and caches them per process
(services/tasks/search.py); a cached count is reused while the block's token (rebuild
count, folded contributions + pending ones) is unchanged. The fold adds each folded
contribution to `changes`; a rebuild sets it to the block's tasks and bumps
`analytics_state.rebuilds`. Only the overall rows (series 2) are read, so only they are
initialised here: one UPDATE of ~11,000 rows at 1M tasks (adding the column with a
constant default rewrites nothing on PostgreSQL).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_search"
down_revision: str | Sequence[str] | None = "0009_analytics_pending"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "analytics_rollups",
        sa.Column("changes", sa.BigInteger(), nullable=False, server_default="0"),
    )
    # The pending rows are counted with `changes` when a token is read, so the overall
    # rows start from their tasks (every task has contributed at least once).
    op.execute("UPDATE analytics_rollups SET changes = tasks WHERE series = 2")
    op.create_table(
        "analytics_state",
        sa.Column("id", sa.SmallInteger(), nullable=False),
        sa.Column("rebuilds", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_analytics_state")),
    )


def downgrade() -> None:
    op.drop_table("analytics_state")
    op.drop_column("analytics_rollups", "changes")
