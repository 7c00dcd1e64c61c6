"""index audit: the id filters' indexes hold only tasks with the id; events by task alone

- `ix_tasks_conversation_created`, `ix_tasks_flow_created`, `ix_tasks_user_created` and
  `ix_tasks_parent` become partial (`WHERE <column> IS NOT NULL`). Every query that reads
  them compares the column with a value (`conversation_id = …`, the descendants'
  `parent_task_id = …`), which implies the predicate on both backends, so the plans are
  unchanged; the tasks without the id (most have no conversation and no parent, many no
  flow) are no longer in them.
- `ix_task_events_task` is on `task_id` alone instead of (task_id, event_id): a task's
  events (two or three) are read together and sorted by id in memory, and on PostgreSQL
  equal keys are stored once (B-tree deduplication), the event ids in a posting list. On
  SQLite the row id (event_id) is part of every index entry anyway.

Sizes before and after: bench/README.md (`bench.seed`, bytes per task of each index).

Revision ID: 0018_index_audit
Revises: 0017_failure_rollups
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018_index_audit"
down_revision: str | Sequence[str] | None = "0017_failure_rollups"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# index -> its columns; the first is the id that must be present.
_PARTIAL: dict[str, list[str]] = {
    "ix_tasks_conversation_created": ["conversation_id", "created_at", "task_id"],
    "ix_tasks_flow_created": ["flow_id", "created_at", "task_id"],
    "ix_tasks_user_created": ["user_id", "created_at", "task_id"],
    "ix_tasks_parent": ["parent_task_id"],
}


def upgrade() -> None:
    for name, columns in _PARTIAL.items():
        present = sa.text(f"{columns[0]} IS NOT NULL")
        op.drop_index(name, table_name="tasks")
        op.create_index(name, "tasks", columns, postgresql_where=present, sqlite_where=present)
    op.drop_index("ix_task_events_task", table_name="task_events")
    op.create_index("ix_task_events_task", "task_events", ["task_id"])


def downgrade() -> None:
    op.drop_index("ix_task_events_task", table_name="task_events")
    op.create_index("ix_task_events_task", "task_events", ["task_id", "event_id"])
    for name, columns in _PARTIAL.items():
        op.drop_index(name, table_name="tasks")
        op.create_index(name, "tasks", columns)
