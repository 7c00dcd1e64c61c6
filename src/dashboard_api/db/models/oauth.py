"""OAuth installations of the GitHub, Jira and Slack apps (no token is ever stored)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from dashboard_api.db.base import Base, JSONDoc

OAUTH_PLATFORMS = ("github", "jira", "slack")


class OAuthInstallation(Base):
    __tablename__ = "oauth_installations"
    __table_args__ = (
        CheckConstraint("platform IN ('github','jira','slack')", name="platform"),
        Index("ux_oauth_installations_platform_org", "platform", "organization", unique=True),
    )

    installation_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    platform: Mapped[str] = mapped_column(String(16))
    organization: Mapped[str] = mapped_column(String(255))
    scopes: Mapped[list[str]] = mapped_column(JSONDoc)
    token_expires_at: Mapped[datetime | None]
    installed_at: Mapped[datetime]
    updated_at: Mapped[datetime]
