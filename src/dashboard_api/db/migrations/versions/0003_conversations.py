"""conversations: conversations, messages and the tasks counted towards them

Revision ID: 0003_conversations
Revises: 0001
Create Date: 2026-11-25 18:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import dashboard_api.db.base

revision: str = "0003_conversations"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
_TS = dashboard_api.db.base.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "conversations",
        sa.Column("conversation_id", sa.String(length=36), nullable=False),
        sa.Column("title", sa.String(length=500), nullable=False),
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("agent_type", sa.String(length=64), nullable=True),
        sa.Column("archived", sa.Boolean(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.Column("metadata", _JSON, nullable=False),
        sa.Column("message_count", sa.Integer(), nullable=False),
        sa.Column("task_count", sa.Integer(), nullable=False),
        sa.Column("cost_micros", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("conversation_id", name=op.f("pk_conversations")),
    )
    op.create_index(
        "ix_conversations_user_list",
        "conversations",
        ["user_id", "archived", "updated_at", "conversation_id"],
    )
    op.create_index(
        "ix_conversations_list", "conversations", ["archived", "updated_at", "conversation_id"]
    )

    op.create_table(
        "conversation_messages",
        sa.Column("message_id", sa.String(length=36), nullable=False),
        sa.Column("conversation_id", sa.String(length=36), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("task_id", sa.String(length=255), nullable=True),
        sa.Column("reply_task_id", sa.String(length=255), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("metadata", _JSON, nullable=False),
        sa.CheckConstraint(
            "role IN ('user','assistant','system')", name=op.f("ck_conversation_messages_role")
        ),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.conversation_id"],
            name=op.f("fk_conversation_messages_conversation_id_conversations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("message_id", name=op.f("pk_conversation_messages")),
        sa.UniqueConstraint(
            "conversation_id", "reply_task_id", name="uq_conversation_messages_reply"
        ),
    )
    op.create_index(
        "ix_conversation_messages_list",
        "conversation_messages",
        ["conversation_id", "created_at", "message_id"],
    )

    op.create_table(
        "conversation_tasks",
        sa.Column("task_id", sa.String(length=255), nullable=False),
        sa.Column("conversation_id", sa.String(length=36), nullable=False),
        sa.Column("direct", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.conversation_id"],
            name=op.f("fk_conversation_tasks_conversation_id_conversations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["tasks.task_id"],
            name=op.f("fk_conversation_tasks_task_id_tasks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("task_id", name=op.f("pk_conversation_tasks")),
    )
    op.create_index("ix_conversation_tasks_conversation", "conversation_tasks", ["conversation_id"])


def downgrade() -> None:
    op.drop_index("ix_conversation_tasks_conversation", table_name="conversation_tasks")
    op.drop_table("conversation_tasks")
    op.drop_index("ix_conversation_messages_list", table_name="conversation_messages")
    op.drop_table("conversation_messages")
    op.drop_index("ix_conversations_list", table_name="conversations")
    op.drop_index("ix_conversations_user_list", table_name="conversations")
    op.drop_table("conversations")
