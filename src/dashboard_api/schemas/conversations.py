"""Conversations and messages on the wire (docs/api.md §6)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StringConstraints, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema

from dashboard_api.ids import SLUG_PATTERN, TASK_ID_PATTERN
from dashboard_api.money import micros_to_usd
from dashboard_api.schemas.common import ApiModel
from dashboard_api.timeutil import UtcDateTime

MessageRole = Literal["user", "assistant", "system"]
Title = Annotated[str, StringConstraints(min_length=1, max_length=500)]
Content = Annotated[str, StringConstraints(min_length=1, max_length=100_000)]
Slug = Annotated[str, StringConstraints(pattern=SLUG_PATTERN)]
DEFAULT_TITLE = "New conversation"


class ConversationPublic(BaseModel):
    """A conversation with its derived totals."""

    conversation_id: str
    title: str
    user_id: str
    agent_type: str | None
    archived: bool
    created_at: UtcDateTime
    updated_at: UtcDateTime
    message_count: int
    task_count: int = Field(
        description="Tasks linked to the conversation, plus their descendant tasks."
    )
    total_cost_usd: float = Field(description="Exact sum of the cost of the counted tasks.")
    metadata: dict[str, Any]


class MessagePublic(BaseModel):
    """One message of a conversation."""

    message_id: str
    conversation_id: str
    role: MessageRole
    content: str
    task_id: str | None = Field(
        description="The task this message created (user) or answers (automatic reply)."
    )
    created_at: UtcDateTime
    metadata: dict[str, Any]


def _unstorable(value: Any, path: str) -> str | None:
    """Where `value` holds text PostgreSQL cannot store (NUL, lone surrogates), or None."""
    if isinstance(value, str):
        if "\x00" in value:
            return path
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            where = _unstorable(key, path) or _unstorable(item, f"{path}.{key}")
            if where:
                return where
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if where := _unstorable(item, f"{path}[{i}]"):
                return where
    return None


class _Body(ApiModel):
    """A request body whose strings must be storable on both backends."""

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: Any) -> Any:
        where = _unstorable(data, "body")
        if where:
            raise ValueError(f"{where}: NUL characters and lone surrogates are not allowed")
        return data


class ConversationCreate(_Body):
    """Start a conversation owned by the caller."""

    title: Title = DEFAULT_TITLE
    agent_type: Slug | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class ConversationUpdate(_Body):
    """Rename, archive or unarchive; absent fields stay as they are."""

    # Absent means "leave as is"; null is refused (the schema does not offer it).
    title: Title | SkipJsonSchema[None] = None
    archived: bool | SkipJsonSchema[None] = None
    agent_type: Slug | None = Field(
        default=None, description="Default agent type of new tasks; null clears it."
    )
    metadata: dict[str, Any] | SkipJsonSchema[None] = Field(
        default=None, description="Replaces the stored object."
    )

    @field_validator("title", "archived", "metadata")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        # Runs only on given values: an explicit null is a mistake, not "leave as is".
        if value is None:
            raise ValueError("may not be null")
        return value


class MessageCreate(_Body):
    """Post a message. A `user` message with `create_task` also queues a task for an agent."""

    content: Content
    role: MessageRole | SkipJsonSchema[None] = Field(
        default=None,
        description=(
            "Default `user` (for an `agent` token: `assistant`). A `user` token may post only "
            "`user` (else 403); an `agent` token only `assistant` or `system` (else 403)."
        ),
    )
    create_task: bool = Field(
        default=True, description="For `user` messages: queue a task with the content."
    )
    agent_type: Slug | None = Field(
        default=None,
        description="Agent type of the task; default the conversation's, else the configured one.",
    )
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("role", mode="before")
    @classmethod
    def _role_not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("may not be null")
        return value


class TaskLink(ApiModel):
    """Link an existing task to a conversation."""

    task_id: Annotated[str, StringConstraints(pattern=TASK_ID_PATTERN)]


def conversation_public(c: Any) -> ConversationPublic:
    """The API form of a `Conversation` row."""

    return ConversationPublic(
        conversation_id=c.conversation_id,
        title=c.title,
        user_id=c.user_id,
        agent_type=c.agent_type,
        archived=c.archived,
        created_at=c.created_at,
        updated_at=c.updated_at,
        message_count=c.message_count,
        task_count=c.task_count,
        total_cost_usd=micros_to_usd(c.cost_micros),
        metadata=c.metadata_,
    )


def message_public(m: Any) -> MessagePublic:
    """The API form of a `ConversationMessage` row."""
    return MessagePublic(
        message_id=m.message_id,
        conversation_id=m.conversation_id,
        role=m.role,
        content=m.content,
        task_id=m.task_id,
        created_at=m.created_at,
        metadata=m.metadata_,
    )
