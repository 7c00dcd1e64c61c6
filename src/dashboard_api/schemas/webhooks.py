"""Webhooks on the wire: per-source configs, recorded events, statistics (docs/api.md §7)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, SecretStr, StringConstraints

from dashboard_api.schemas.common import ApiModel
from dashboard_api.schemas.tasks import TaskId
from dashboard_api.timeutil import UtcDateTime

WebhookSource = Literal["github", "jira", "slack"]
WebhookStatus = Literal["success", "failed"]


class WebhookConfigPublic(BaseModel):
    """A provider's settings and recent health; the secret itself is never part of it."""

    source: WebhookSource
    enabled: bool
    configured: bool = Field(description="Whether a secret is set.")
    receive_path: str
    last_received_at: UtcDateTime | None
    events_24h: int
    success_rate_24h: float | None


class WebhookConfigUpdate(ApiModel):
    """`PUT /api/webhooks/{source}`: fields left out stay; `secret: null` unsets it."""

    enabled: bool | None = None
    secret: Annotated[SecretStr, Field(min_length=1, max_length=1024)] | None = Field(
        default=None, description="Write-only. `null` removes the secret."
    )


class WebhookEventPublic(BaseModel):
    event_id: str
    source: WebhookSource
    event_type: str
    delivery_id: str | None
    status: WebhookStatus
    error: str | None
    received_at: UtcDateTime
    payload_bytes: int
    task_id: str | None


class WebhookEventDetail(WebhookEventPublic):
    """One event with its stored payload (the parsed JSON; null when none was kept)."""

    payload: Any = None


class WebhookEventCreate(ApiModel):
    """An event handled elsewhere (e.g. by an agent engine), recorded for monitoring."""

    source: WebhookSource
    event_type: Annotated[str, StringConstraints(min_length=1, max_length=255)]
    status: WebhookStatus
    error: Annotated[str, StringConstraints(max_length=100_000)] | None = None
    delivery_id: Annotated[str, StringConstraints(min_length=1, max_length=255)] | None = None
    received_at: UtcDateTime | None = None
    task_id: TaskId | None = None
    payload: Any = None


class WebhookReceived(BaseModel):
    """The answer to a verified delivery (Slack's url_verification gets `{"challenge"}`)."""

    ok: bool = True
    event_id: str
    event_type: str
    duplicate: bool = Field(description="The delivery id was seen before; nothing was recorded.")
    task_id: str | None


class SourceStats(BaseModel):
    source: WebhookSource
    total: int
    succeeded: int
    failed: int
    success_rate: float | None
    last_received_at: UtcDateTime | None
    last_success_at: UtcDateTime | None
    last_failure_at: UtcDateTime | None


class WebhookStats(BaseModel):
    from_: UtcDateTime = Field(alias="from", serialization_alias="from")
    to: UtcDateTime
    sources: list[SourceStats]

    model_config = {"populate_by_name": True}


def event_public(e: Any) -> WebhookEventPublic:
    """The API form of a `WebhookEvent` row (without the payload)."""
    return WebhookEventPublic(
        event_id=e.event_id,
        source=e.source,
        event_type=e.event_type,
        delivery_id=e.delivery_id,
        status=e.status,
        error=e.error,
        received_at=e.received_at,
        payload_bytes=e.payload_bytes,
        task_id=e.task_id,
    )


def event_detail(e: Any) -> WebhookEventDetail:
    """The API form of a `WebhookEvent` row with its payload."""
    return WebhookEventDetail(**event_public(e).model_dump(), payload=e.payload)
