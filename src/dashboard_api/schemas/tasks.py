"""Tasks on the wire: the task, its summary, producer bodies, logs."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from dashboard_api.ids import SLUG_PATTERN, TASK_ID_PATTERN
from dashboard_api.schemas.common import ApiModel
from dashboard_api.schemas.tasks_json import SUMMARY_COLUMNS as SUMMARY_COLUMNS
from dashboard_api.schemas.tasks_json import public_doc, summary_doc
from dashboard_api.task_statuses import FailureReason, TaskStatus
from dashboard_api.timeutil import UtcDateTime

Stream = Literal["stdout", "stderr", "system"]
SortKey = Literal[
    "created_at", "-created_at", "cost_usd", "-cost_usd", "duration_seconds", "-duration_seconds"
]

TaskId = Annotated[str, StringConstraints(pattern=TASK_ID_PATTERN)]
Slug = Annotated[str, StringConstraints(pattern=SLUG_PATTERN)]
ShortText = Annotated[str, StringConstraints(min_length=1, max_length=255)]
# At most 2**53 - 1, the largest integer every JSON parser reads exactly.
MAX_COUNT = 2**53 - 1
Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]
LeaseSeconds = Annotated[
    int,
    Field(
        ge=10,
        le=86_400,
        description="Lease of the running task (default DASHBOARD_TASK_LEASE_SECONDS): it "
        "fails unless a producer call or heartbeat renews it in time.",
    ),
]


class _TaskFields(BaseModel):
    """What a task's summary and the whole task both say (not a schema of its own)."""

    task_id: str
    status: TaskStatus
    agent_type: str
    assigned_agent: str | None
    source: str
    user_id: str | None
    conversation_id: str | None
    parent_task_id: str | None
    flow_id: str | None
    model: str | None
    cost_usd: float
    cost_basis: Literal["reported", "computed"]
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    duration_seconds: float | None
    created_at: UtcDateTime
    started_at: UtcDateTime | None
    completed_at: UtcDateTime | None
    updated_at: UtcDateTime
    cancel_requested: bool
    output_seq: int
    output_truncated: bool = Field(description="Whether output past the log cap was dropped.")
    lease_expires_at: UtcDateTime | None = Field(
        description="While running: when the task fails unless its producer is heard from."
    )
    failure_reason: FailureReason | None = Field(
        description="Why it failed: `lease_expired` (its agent went silent) or `agent` "
        "(a producer reported it); null unless failed."
    )
    attempt: int = Field(description="1 for a first run, n for the (n-1)th retry.")
    max_attempts: int = Field(
        description="Runs allowed in all; a lease expiry with runs left is retried once."
    )
    retry_of: str | None = Field(description="The task this one retries.")
    retry_task_id: str | None = Field(description="The retry of this task, once there is one.")


class TaskSummary(_TaskFields):
    """A task as listed: the large text fields replaced by a preview and `has_error`."""

    input_preview: str
    has_error: bool


class TaskPublic(_TaskFields):
    """The whole task (docs/api.md §3)."""

    input_message: str
    result: str | None
    error: str | None
    metadata: dict[str, Any]


def _storable_text_path(value: Any, path: str = "") -> str | None:
    """Where `value` holds text no backend can store (NUL, lone surrogates); None if nowhere."""
    if isinstance(value, str):
        if "\x00" in value:
            return path or "value"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path or "value"
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            where = _storable_text_path(key, f"{path}.{key!r}") or _storable_text_path(
                item, f"{path}.{key}" if path else str(key)
            )
            if where:
                return where
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if where := _storable_text_path(item, f"{path}[{i}]"):
                return where
    return None


def _all_storable(value: Any) -> bool:
    """Whether every string in `value` is storable: `_storable_text_path` without the
    paths it formats at every key, for the common case (every body a producer sends)."""
    if isinstance(value, str):
        return "\x00" not in value and (value.isascii() or _encodes(value))
    if isinstance(value, dict):
        return all(_all_storable(k) and _all_storable(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_all_storable(v) for v in value)
    return True


def _encodes(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class _TaskBody(ApiModel):
    """A producer body: strings must be storable on both backends (PostgreSQL refuses NUL)."""

    @model_validator(mode="before")
    @classmethod
    def _storable_text(cls, data: Any) -> Any:
        if _all_storable(data):
            return data
        where = _storable_text_path(data)
        if where:
            raise ValueError(f"{where}: NUL characters and lone surrogates are not allowed")
        return data


class TaskCreate(_TaskBody):
    """Register a task (producer)."""

    task_id: TaskId | None = None
    agent_type: Slug
    input_message: Annotated[str, StringConstraints(max_length=1_000_000)]
    source: Slug = "api"
    status: Literal["queued", "running"] = "queued"
    assigned_agent: ShortText | None = None
    model: ShortText | None = None
    user_id: ShortText | None = None
    conversation_id: ShortText | None = None
    parent_task_id: TaskId | None = None
    flow_id: ShortText | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    created_at: UtcDateTime | None = None
    lease_seconds: LeaseSeconds | None = None
    max_attempts: int = Field(
        1, ge=1, le=10, description="Runs allowed in all; a lease expiry with runs left is retried."
    )


class TaskUpdate(_TaskBody):
    """Update a task (producer). Metrics are absolute values."""

    status: TaskStatus | None = None
    assigned_agent: ShortText | None = None
    result: Annotated[str, StringConstraints(max_length=10_000_000)] | None = None
    error: Annotated[str, StringConstraints(max_length=1_000_000)] | None = None
    model: ShortText | None = None
    cost_usd: Annotated[float, Field(ge=0, le=1e9, allow_inf_nan=False)] | None = None
    input_tokens: Count | None = None
    output_tokens: Count | None = None
    cache_read_tokens: Count | None = None
    cache_write_tokens: Count | None = None
    metadata: dict[str, Any] | None = None


class OutputChunkIn(ApiModel):
    content: str
    stream: Stream = "stdout"


class OutputAppend(_TaskBody):
    """Either one chunk (`content`, with an optional `stream`) or a batch (`chunks`)."""

    # The schema states the two forms (oneOf); null is no value for any of the fields.
    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [{"required": ["content"]}, {"required": ["chunks"]}],
            "not": {"required": ["chunks", "stream"]},
        }
    )

    content: str | SkipJsonSchema[None] = None
    stream: Stream | SkipJsonSchema[None] = None
    chunks: Annotated[list[OutputChunkIn], Field(min_length=1)] | SkipJsonSchema[None] = None

    @model_validator(mode="after")
    def _one_form(self) -> OutputAppend:
        given_null = [f for f in self.model_fields_set if getattr(self, f) is None]
        if given_null:
            raise ValueError(f"`{given_null[0]}` may not be null (leave it out)")
        if (self.content is None) == (self.chunks is None):
            raise ValueError("give either `content` (with an optional `stream`) or `chunks`")
        if self.chunks is not None and self.stream is not None:
            raise ValueError("`stream` goes inside each chunk when `chunks` is used")
        if self.chunks is not None and not self.chunks:
            raise ValueError("`chunks` must not be empty")
        return self

    def as_chunks(self) -> list[OutputChunkIn]:
        if self.chunks is not None:
            return self.chunks
        assert self.content is not None
        return [OutputChunkIn(content=self.content, stream=self.stream or "stdout")]


class OutputAppended(BaseModel):
    first_seq: int | None = Field(
        description="Seq of the first stored chunk; null if none was stored."
    )
    last_seq: int = Field(description="The task's last seq after this append.")
    truncated: bool


class TaskClaim(_TaskBody):
    agent_type: Slug | Annotated[list[Slug], Field(min_length=1, max_length=100)]
    agent: ShortText
    lease_seconds: LeaseSeconds | None = None

    @field_validator("agent_type")
    @classmethod
    def _as_list(cls, v: str | list[str]) -> list[str]:
        return [v] if isinstance(v, str) else v


class StatusEventOut(BaseModel):
    type: Literal["status"] = "status"
    status: TaskStatus
    at: UtcDateTime


class ChunkOut(BaseModel):
    seq: int
    stream: Stream
    content: str
    created_at: UtcDateTime


class FullLog(BaseModel):
    task: TaskPublic
    events: list[StatusEventOut]
    chunks: list[ChunkOut]
    output: str
    last_seq: int
    truncated: bool


# --- the models of storage rows ---------------------------------------------------------
# Built from the documents of `schemas.tasks_json` (the one statement of which column
# becomes which field), timestamps left as datetimes for the models to write.


def task_public(t: Any) -> TaskPublic:
    """The API form of a `Task` row."""
    return TaskPublic.model_validate(public_doc(t, timestamps_as_text=False))


def task_summary(
    t: Any, *, input_preview: str | None = None, has_error: bool | None = None
) -> TaskSummary:
    """The summary form of a `Task` row, or of a list-query row with preview and has_error."""
    return TaskSummary.model_validate(
        summary_doc(t, input_preview=input_preview, has_error=has_error, timestamps_as_text=False)
    )
