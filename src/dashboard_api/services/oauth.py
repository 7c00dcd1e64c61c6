"""OAuth status: installations reported by agents, classified against settings and the clock."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard_api.db.dialect import dialect_of
from dashboard_api.db.models.oauth import OAUTH_PLATFORMS, OAuthInstallation
from dashboard_api.errors import Conflict, NotFound
from dashboard_api.ids import new_id
from dashboard_api.schemas.oauth import (
    InstallationPublic,
    InstallationUpsert,
    PlatformStatus,
    TokenStatus,
)
from dashboard_api.settings import Settings

PLATFORM_NAMES = {"github": "GitHub", "jira": "Jira", "slack": "Slack"}


def require_platform(platform: str) -> str:
    """The platform, or 404 for one we do not know."""
    if platform not in OAUTH_PLATFORMS:
        raise NotFound(f"No platform {platform!r}. Known: {', '.join(OAUTH_PLATFORMS)}.")
    return platform


def token_status(expires_at: datetime | None, *, now: datetime, soon: timedelta) -> TokenStatus:
    """`expired` at or after expiry, `expiring_soon` within `soon` of it (inclusive)."""
    if expires_at is None:
        return "no_expiry"
    left = expires_at - now
    if left <= timedelta(0):
        return "expired"
    return "expiring_soon" if left <= soon else "valid"


def _required_scopes(settings: Settings, platform: str) -> list[str]:
    scopes: list[str] = getattr(settings, f"{platform}_required_scopes")
    return scopes


def _configured(settings: Settings, platform: str) -> bool:
    return bool(
        getattr(settings, f"{platform}_client_id")
        and getattr(settings, f"{platform}_client_secret")
    )


def installation_public(
    row: OAuthInstallation, *, settings: Settings, now: datetime
) -> InstallationPublic:
    """The API form of an installation, classified at `now`."""
    have = set(row.scopes)
    return InstallationPublic(
        installation_id=row.installation_id,
        platform=row.platform,
        organization=row.organization,
        installed_at=row.installed_at,
        scopes=list(row.scopes),
        token_expires_at=row.token_expires_at,
        token_status=token_status(
            row.token_expires_at,
            now=now,
            soon=timedelta(days=settings.oauth_expiring_soon_days),
        ),
        missing_scopes=[s for s in _required_scopes(settings, row.platform) if s not in have],
    )


async def platform_statuses(
    session: AsyncSession, *, settings: Settings, now: datetime, platforms: Sequence[str]
) -> list[PlatformStatus]:
    """The status of each given platform, its installations ordered by organization."""
    rows = (
        await session.scalars(
            select(OAuthInstallation)
            .where(OAuthInstallation.platform.in_(list(platforms)))
            .order_by(OAuthInstallation.organization, OAuthInstallation.installation_id)
        )
    ).all()
    out = []
    for platform in platforms:
        mine = [
            installation_public(r, settings=settings, now=now)
            for r in rows
            if r.platform == platform
        ]
        out.append(
            PlatformStatus(
                platform=platform,
                name=PLATFORM_NAMES[platform],
                configured=_configured(settings, platform),
                installed=bool(mine),
                installations=mine,
            )
        )
    return out


async def upsert_installation(
    session: AsyncSession, *, body: InstallationUpsert, now: datetime
) -> tuple[OAuthInstallation, bool]:
    """Insert or update by (platform, organization): (installation, created)."""
    fields = body.model_fields_set
    new_values = {
        "installation_id": new_id(),
        "platform": body.platform,
        "organization": body.organization,
        "scopes": list(dict.fromkeys(body.scopes)),
        "token_expires_at": body.token_expires_at,
        "installed_at": body.installed_at or now,
        "updated_at": now,
    }
    stmt = (
        dialect_of(session)
        .lock_for_update(
            select(OAuthInstallation).where(
                OAuthInstallation.platform == body.platform,
                OAuthInstallation.organization == body.organization,
            ),
        )
        .execution_options(populate_existing=True)
    )
    row: OAuthInstallation | None = None
    # Insert-or-nothing first, so that two concurrent reports create one row; try again
    # if the row it collided with is deleted before we lock it.
    for _ in range(2):
        inserted = (
            await session.execute(
                dialect_of(session)
                .insert(OAuthInstallation.__table__)  # type: ignore[arg-type]
                .values(**new_values)
                .on_conflict_do_nothing(
                    index_elements=[OAuthInstallation.platform, OAuthInstallation.organization]
                )
                .returning(OAuthInstallation.installation_id)
            )
        ).scalar_one_or_none()
        row = (await session.scalars(stmt)).first()
        if row is not None:
            break
    if row is None:
        raise Conflict("The installation was changed concurrently; try again.")
    if inserted is not None:
        return row, True
    row.scopes = list(dict.fromkeys(body.scopes))
    if "token_expires_at" in fields:
        row.token_expires_at = body.token_expires_at
    if body.installed_at is not None:
        row.installed_at = body.installed_at
    row.updated_at = now
    await session.flush()
    return row, False


async def delete_installation(session: AsyncSession, *, installation_id: str) -> None:
    """Remove an installation, or 404."""
    row = await session.get(OAuthInstallation, installation_id)
    if row is None:
        raise NotFound(f"No installation {installation_id!r}.")
    await session.delete(row)
