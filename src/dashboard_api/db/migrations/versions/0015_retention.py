"""retention: what pruning removed, on `analytics_state`

`prunes` counts prune batches (part of the q-count cache's token, like `rebuilds`: a
prune removes tasks without recording a contribution); `pruned_before_s` is the instant
(epoch seconds) before which terminal tasks may have been pruned while the rollups still
count them, so task-list totals count the tasks before it from the tasks table.

Revision ID: 0015_retention
Revises: 0014_guards
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015_retention"
down_revision: str | Sequence[str] | None = "0014_guards"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("analytics_state") as batch:
        batch.add_column(sa.Column("prunes", sa.BigInteger(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("pruned_before_s", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("analytics_state") as batch:
        batch.drop_column("pruned_before_s")
        batch.drop_column("prunes")
