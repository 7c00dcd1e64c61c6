"""Alert rules, notification channels, alerts and delivery attempts (docs/api.md §15)."""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import BaseModel, Field, SecretStr, StringConstraints, field_validator

from dashboard_api.schemas.common import ApiModel
from dashboard_api.timeutil import UtcDateTime

ChannelType = Literal["webhook", "slack"]
RuleKind = Literal[
    "failure_rate",
    "cost_usd",
    "duration_p95_seconds",
    "agent_offline",
    "lease_expired",
    "webhook_signature_failures",
    "oauth_expiring",
    "index_job_failed",
    "budget",
]
AlertState = Literal["firing", "resolved"]
ResourceId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:@-]{1,255}$")]


class ChannelIn(ApiModel):
    """`PUT /api/alerts/channels/{channel_id}`. Leaving `secret` out keeps the one stored;
    `null` removes it."""

    type: ChannelType
    url: Annotated[
        str,
        StringConstraints(min_length=1, max_length=2048),
        Field(
            description=(
                "An http or https URL whose host resolves to a public address (unless "
                "DASHBOARD_ALERTS_ALLOW_PRIVATE_URLS): else 422."
            )
        ),
    ]
    secret: Annotated[SecretStr, Field(min_length=1, max_length=1024)] | None = Field(
        default=None, description="Write-only: the HMAC key of `webhook` signatures."
    )


class ChannelOut(BaseModel):
    """A channel; neither its secret nor the path of its URL (which for Slack is the
    credential) is ever returned."""

    channel_id: str
    type: ChannelType
    url: str = Field(description="Scheme, host and port only: `https://hooks.example.com/…`.")
    has_secret: bool
    created_at: UtcDateTime
    updated_at: UtcDateTime


class RuleScope(ApiModel):
    agent_type: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    source: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None


class RuleIn(ApiModel):
    """`PUT /api/alerts/rules/{rule_id}`: the whole rule (create or replace)."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=255)]
    kind: RuleKind
    scope: RuleScope | None = None
    window_minutes: int = Field(15, ge=1, le=1440)
    threshold: float = Field(
        ge=0,
        le=1e12,
        description="The rule holds when the value is at least this (and above zero).",
    )
    channels: list[ResourceId] = Field(
        default_factory=list,
        max_length=20,
        description="Ids of existing channels (PUT them first): an unknown id is 422.",
    )
    enabled: bool = True

    @field_validator("threshold")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value


class RuleOut(BaseModel):
    rule_id: str
    name: str
    kind: RuleKind
    scope: dict[str, str]
    window_minutes: int
    threshold: float
    channels: list[str]
    enabled: bool
    created_at: UtcDateTime
    updated_at: UtcDateTime


class AlertOut(BaseModel):
    alert_id: str
    rule_id: str
    rule_name: str
    kind: RuleKind | Literal["test"]
    state: AlertState
    value: float
    threshold: float
    summary: str
    started_at: UtcDateTime
    resolved_at: UtcDateTime | None


class DeliveryAttemptOut(BaseModel):
    """One send of one notification."""

    attempt: int
    at: UtcDateTime
    status_code: int | None
    error: str | None
    delivery_id: str
    channel_id: str
    event: Literal["firing", "resolved", "test"]
    delivery_state: Literal["pending", "delivered", "failed"]
    response_excerpt: str | None = Field(description="At most the first 512 bytes of the answer.")
