"""retention: `analytics_state.empty_before_s`, below which the tasks table holds no task

A prune deletes old terminal tasks step by step; until vacuum, the index entries of the
rows it deleted stay in every index of `tasks`, and a list total that counted the pruned
period from the table (everything before `pruned_before_s`) walked all of them, slower
the further the prune went. `empty_before_s` (epoch seconds; NULL: not known) is an
instant before which no task is left: a prune raises it to where it has deleted
everything (never past a task it kept), an insert of a task created before it lowers it
in the same transaction. A total counts from the table only the tasks created between
it and `pruned_before_s` (about one prune step while a prune runs).

Revision ID: 0019_retention_empty_before
Revises: 0018_index_audit
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019_retention_empty_before"
down_revision: str | Sequence[str] | None = "0018_index_audit"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("analytics_state") as batch:
        batch.add_column(sa.Column("empty_before_s", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("analytics_state") as batch:
        batch.drop_column("empty_before_s")
