"""OAuth installation status on the wire (docs/api.md §8)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, StringConstraints

from dashboard_api.schemas.common import ApiModel
from dashboard_api.timeutil import UtcDateTime

Platform = Literal["github", "jira", "slack"]
TokenStatus = Literal["valid", "expiring_soon", "expired", "no_expiry"]
Scope = Annotated[str, StringConstraints(min_length=1, max_length=255)]


class InstallationPublic(BaseModel):
    installation_id: str
    platform: Platform
    organization: str
    installed_at: UtcDateTime
    scopes: list[str]
    token_expires_at: UtcDateTime | None
    token_status: TokenStatus
    missing_scopes: list[str] = Field(description="Required scopes (a setting) it lacks.")


class PlatformStatus(BaseModel):
    platform: Platform
    name: str
    configured: bool = Field(description="Client id and secret are set in the settings.")
    installed: bool
    installations: list[InstallationPublic]


class PlatformStatuses(BaseModel):
    platforms: list[PlatformStatus]


class InstallationUpsert(ApiModel):
    """Report an installation (agent); upserted by (platform, organization).

    On an update, fields left out keep their stored value; `token_expires_at: null`
    records a token that does not expire.
    """

    platform: Platform
    organization: Annotated[str, StringConstraints(min_length=1, max_length=255)]
    scopes: Annotated[list[Scope], Field(max_length=500)]
    token_expires_at: UtcDateTime | None = None
    installed_at: UtcDateTime | None = None
