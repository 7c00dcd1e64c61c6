"""Tasks, their status history and their output log."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from dashboard_api.db.base import Base

# Sort keys that put tasks without a duration last in each direction (docs/api.md §3).
DURATION_ASC_KEY = func.coalesce(text("duration_us"), 9223372036854775807)
DURATION_DESC_KEY = func.coalesce(text("duration_us"), -1)


class Task(Base):
    __tablename__ = "tasks"
    __table_args__ = (
        CheckConstraint(
            "status IN ('queued','running','completed','failed','cancelled')", name="status"
        ),
        Index("ix_tasks_created", "created_at", "task_id"),
        Index("ix_tasks_status_created", "status", "created_at", "task_id"),
        Index("ix_tasks_agent_type_created", "agent_type", "created_at", "task_id"),
        Index("ix_tasks_source_created", "source", "created_at", "task_id"),
        # The id filters' indexes hold only the tasks that have the id: every query
        # reading them compares it with a value (migration 0018).
        Index(
            "ix_tasks_conversation_created",
            "conversation_id",
            "created_at",
            "task_id",
            postgresql_where=text("conversation_id IS NOT NULL"),
            sqlite_where=text("conversation_id IS NOT NULL"),
        ),
        Index(
            "ix_tasks_flow_created",
            "flow_id",
            "created_at",
            "task_id",
            postgresql_where=text("flow_id IS NOT NULL"),
            sqlite_where=text("flow_id IS NOT NULL"),
        ),
        Index(
            "ix_tasks_user_created",
            "user_id",
            "created_at",
            "task_id",
            postgresql_where=text("user_id IS NOT NULL"),
            sqlite_where=text("user_id IS NOT NULL"),
        ),
        Index(
            "ix_tasks_parent",
            "parent_task_id",
            postgresql_where=text("parent_task_id IS NOT NULL"),
            sqlite_where=text("parent_task_id IS NOT NULL"),
        ),
        Index("ix_tasks_cost", "cost_micros", "task_id"),
        Index("ix_tasks_duration_asc", DURATION_ASC_KEY, "task_id"),
        Index("ix_tasks_duration_desc", DURATION_DESC_KEY, "task_id"),
        # The claim queue: only queued rows, oldest first per agent type.
        Index(
            "ix_tasks_queue",
            "agent_type",
            "created_at",
            "task_id",
            postgresql_where=text("status = 'queued'"),
            sqlite_where=text("status = 'queued'"),
        ),
    )

    task_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    agent_type: Mapped[str] = mapped_column(String(64))
    assigned_agent: Mapped[str | None] = mapped_column(String(255))
    source: Mapped[str] = mapped_column(String(64))
    input_message: Mapped[str] = mapped_column(Text)
    result: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    user_id: Mapped[str | None] = mapped_column(String(255))
    conversation_id: Mapped[str | None] = mapped_column(String(255))
    parent_task_id: Mapped[str | None] = mapped_column(String(255))
    flow_id: Mapped[str | None] = mapped_column(String(255))
    model: Mapped[str | None] = mapped_column(String(255))
    cost_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_reported: Mapped[bool] = mapped_column(Boolean, default=False)
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_read_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_write_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    # completed_at - started_at, kept as a column so that it can be sorted on an index.
    duration_us: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]
    first_output_at: Mapped[datetime | None]
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    output_seq: Mapped[int] = mapped_column(Integer, default=0)
    output_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    output_truncated: Mapped[bool] = mapped_column(Boolean, default=False)
    # Leases (docs/api.md §13): set while running, renewed by producer calls and heartbeats.
    lease_expires_at: Mapped[datetime | None]
    lease_seconds: Mapped[int | None] = mapped_column(Integer)
    failure_reason: Mapped[str | None] = mapped_column(String(32))  # see FAILURE_REASONS
    attempt: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    max_attempts: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    retry_of: Mapped[str | None] = mapped_column(String(255))
    retry_task_id: Mapped[str | None] = mapped_column(String(255))


class TaskEvent(Base):
    """A task's status history, in the order it happened."""

    __tablename__ = "task_events"
    # A task's events are read together and sorted in memory: on task_id alone, equal
    # keys are stored once on PostgreSQL (B-tree deduplication; migration 0018).
    __table_args__ = (Index("ix_task_events_task", "task_id"),)

    event_id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    task_id: Mapped[str] = mapped_column(
        String(255), ForeignKey("tasks.task_id", ondelete="CASCADE")
    )
    type: Mapped[str] = mapped_column(String(32), default="status")
    status: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime]


class TaskOutputChunk(Base):
    """One numbered piece of a task's output; (task_id, seq) is gap-free from 1."""

    __tablename__ = "task_output_chunks"

    task_id: Mapped[str] = mapped_column(
        String(255), ForeignKey("tasks.task_id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    stream: Mapped[str] = mapped_column(String(8))
    content: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]
