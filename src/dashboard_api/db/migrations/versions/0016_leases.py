"""leases: running tasks and index jobs hold a lease; failure reasons; retries

Revision ID: 0016_leases
Revises: 0015_retention
Create Date: 2026-12-07 13:45:00.000000

Tasks gain `lease_expires_at`/`lease_seconds` (docs/api.md §13), `failure_reason`, `attempt`,
`max_attempts`, `retry_of` and `retry_task_id`; index jobs gain the same lease. Tasks and
jobs already running get a lease of the default length (300 s) from now, so that one whose
agent is gone is failed by the reaper instead of staying running for ever. Failed tasks
get `failure_reason = 'agent'` (a producer reported every failure before leases existed).
Adding nullable columns, or ones with a constant default, rewrites nothing on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import op

import dashboard_api.db.base

revision: str = "0016_leases"
down_revision: str | Sequence[str] | None = "0015_retention"
branch_labels: str | Sequence[str] | None = None
# index_jobs comes from the integrations branch of the history.
depends_on: str | Sequence[str] | None = "0004_integrations"

_DEFAULT_LEASE_SECONDS = 300
_RUNNING = sa.text("status = 'running'")


def _ts() -> sa.types.TypeEngine[datetime]:
    return dashboard_api.db.base.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.add_column("tasks", sa.Column("lease_expires_at", _ts(), nullable=True))
    op.add_column("tasks", sa.Column("lease_seconds", sa.Integer(), nullable=True))
    op.add_column("tasks", sa.Column("failure_reason", sa.String(length=32), nullable=True))
    op.add_column("tasks", sa.Column("attempt", sa.Integer(), nullable=False, server_default="1"))
    op.add_column(
        "tasks", sa.Column("max_attempts", sa.Integer(), nullable=False, server_default="1")
    )
    op.add_column("tasks", sa.Column("retry_of", sa.String(length=255), nullable=True))
    op.add_column("tasks", sa.Column("retry_task_id", sa.String(length=255), nullable=True))
    # No index on tasks for these: the reaper reads the running tasks through the status
    # index (few rows), one retry per task is settled under the original's row lock, and
    # each index more made a task write slower (SQLite planned the q counts worse too).
    op.add_column("index_jobs", sa.Column("lease_expires_at", _ts(), nullable=True))
    op.add_column("index_jobs", sa.Column("lease_seconds", sa.Integer(), nullable=True))
    op.create_index(
        "ix_index_jobs_lease",
        "index_jobs",
        ["lease_expires_at"],
        postgresql_where=_RUNNING,
        sqlite_where=_RUNNING,
    )

    lease_end = datetime.now(UTC) + timedelta(seconds=_DEFAULT_LEASE_SECONDS)
    for name in ("tasks", "index_jobs"):
        table = sa.table(
            name,
            sa.column("status", sa.String()),
            sa.column("lease_expires_at", _ts()),
            sa.column("lease_seconds", sa.Integer()),
        )
        op.execute(
            table.update()
            .where(table.c.status == "running")
            .values(lease_expires_at=lease_end, lease_seconds=_DEFAULT_LEASE_SECONDS)
        )
    op.execute("UPDATE tasks SET failure_reason = 'agent' WHERE status = 'failed'")


def downgrade() -> None:
    op.drop_index("ix_index_jobs_lease", table_name="index_jobs")
    op.drop_column("index_jobs", "lease_seconds")
    op.drop_column("index_jobs", "lease_expires_at")
    for column in (
        "retry_task_id", "retry_of", "max_attempts", "attempt", "failure_reason",
        "lease_seconds", "lease_expires_at",
    ):  # fmt: skip
        op.drop_column("tasks", column)
