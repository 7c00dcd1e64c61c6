"""Conversations, their messages, and which tasks count towards each conversation."""

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
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from dashboard_api.db.base import Base

MESSAGE_ROLES = ("user", "assistant", "system")


class Conversation(Base):
    """A chat thread of one user; the counters are kept by deltas in each write."""

    __tablename__ = "conversations"
    __table_args__ = (
        # The list order (newest `updated_at` first) per owner, and for admins across owners.
        Index("ix_conversations_user_list", "user_id", "archived", "updated_at", "conversation_id"),
        Index("ix_conversations_list", "archived", "updated_at", "conversation_id"),
    )

    conversation_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    title: Mapped[str] = mapped_column(String(500))
    user_id: Mapped[str] = mapped_column(String(255))
    agent_type: Mapped[str | None] = mapped_column(String(64))
    archived: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    message_count: Mapped[int] = mapped_column(Integer, default=0)
    task_count: Mapped[int] = mapped_column(Integer, default=0)
    cost_micros: Mapped[int] = mapped_column(BigInteger, default=0)


class ConversationMessage(Base):
    """One message. `reply_task_id` is set only on the automatic reply to a finished task."""

    __tablename__ = "conversation_messages"
    __table_args__ = (
        CheckConstraint("role IN ('user','assistant','system')", name="role"),
        Index("ix_conversation_messages_list", "conversation_id", "created_at", "message_id"),
        # Exactly one reply per (conversation, task), even under racing terminal updates.
        UniqueConstraint("conversation_id", "reply_task_id", name="uq_conversation_messages_reply"),
    )

    message_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    conversation_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("conversations.conversation_id", ondelete="CASCADE")
    )
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    task_id: Mapped[str | None] = mapped_column(String(255))
    reply_task_id: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime]
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)


class ConversationTask(Base):
    """A task that counts towards a conversation's totals.

    `direct` tasks are linked (their `conversation_id` names the conversation) and get a
    reply when they end; the others are descendants (by `parent_task_id`) of a linked task.
    """

    __tablename__ = "conversation_tasks"
    __table_args__ = (Index("ix_conversation_tasks_conversation", "conversation_id"),)

    task_id: Mapped[str] = mapped_column(
        String(255), ForeignKey("tasks.task_id", ondelete="CASCADE"), primary_key=True
    )
    conversation_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("conversations.conversation_id", ondelete="CASCADE")
    )
    direct: Mapped[bool] = mapped_column(Boolean)
