"""Knowledge sources and their re-index jobs (a claimable work queue)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, CheckConstraint, Float, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from dashboard_api.db.base import Base

SOURCE_TYPES = ("github_repo", "jira_project", "confluence_space")
SOURCE_STATUSES = ("pending", "indexing", "ready", "failed")
JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
ACTIVE_JOB_STATUSES = ("queued", "running")
_ACTIVE = text("status IN ('queued','running')")


class DataSource(Base):
    __tablename__ = "data_sources"
    __table_args__ = (
        CheckConstraint("type IN ('github_repo','jira_project','confluence_space')", name="type"),
        CheckConstraint("status IN ('pending','indexing','ready','failed')", name="status"),
        Index("ix_data_sources_created", "created_at", "source_id"),
    )

    source_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    type: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(255))
    config: Mapped[dict[str, Any]]
    # Normalized identity (see services/sources.identity_of); unique so that duplicates
    # are refused even when two admins create the same source at once.
    identity: Mapped[str] = mapped_column(String(700), unique=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    last_indexed_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class IndexJob(Base):
    """One re-index run. Kept after its source is deleted (cancelled), hence no foreign key."""

    __tablename__ = "index_jobs"
    __table_args__ = (
        CheckConstraint(
            "status IN ('queued','running','succeeded','failed','cancelled')", name="status"
        ),
        CheckConstraint("progress >= 0 AND progress <= 1", name="progress"),
        Index("ix_index_jobs_source_created", "source_id", "created_at", "job_id"),
        # Failed jobs by finish time (the `index_job_failed` alert rule).
        Index("ix_index_jobs_status_finished", "status", "finished_at"),
        # The claim queue: queued rows only, oldest first.
        Index(
            "ix_index_jobs_queue",
            "created_at",
            "job_id",
            postgresql_where=text("status = 'queued'"),
            sqlite_where=text("status = 'queued'"),
        ),
        # At most one active job per source, whatever the concurrency.
        Index(
            "ux_index_jobs_active_source",
            "source_id",
            unique=True,
            postgresql_where=_ACTIVE,
            sqlite_where=_ACTIVE,
        ),
        # The lease reaper's probe: running jobs by lease end.
        Index(
            "ix_index_jobs_lease",
            "lease_expires_at",
            postgresql_where=text("status = 'running'"),
            sqlite_where=text("status = 'running'"),
        ),
    )

    job_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    source_id: Mapped[str] = mapped_column(String(36))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    agent: Mapped[str | None] = mapped_column(String(255))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]
    # Leases (docs/api.md §13): set while running, renewed by PATCH.
    lease_expires_at: Mapped[datetime | None]
    lease_seconds: Mapped[int | None] = mapped_column(Integer)
