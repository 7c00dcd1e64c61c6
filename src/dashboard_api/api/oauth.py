"""`/api/oauth`: installation status of the GitHub, Jira and Slack apps."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from dashboard_api.api.deps import AdminRole, AgentRole, CtxDep, UserRole
from dashboard_api.db.models.oauth import OAUTH_PLATFORMS
from dashboard_api.schemas.common import problem_responses
from dashboard_api.schemas.oauth import (
    InstallationPublic,
    InstallationUpsert,
    PlatformStatus,
    PlatformStatuses,
)
from dashboard_api.services import oauth as service

router = APIRouter(prefix="/api/oauth", tags=["oauth"], responses=problem_responses(401, 403, 422))


@router.get("/status", response_model=PlatformStatuses)
async def all_statuses(ctx: CtxDep, _: UserRole) -> PlatformStatuses:
    """Every platform's configuration and installations."""
    async with ctx.db.read() as session:
        platforms = await service.platform_statuses(
            session, settings=ctx.settings, now=ctx.clock.now(), platforms=OAUTH_PLATFORMS
        )
    return PlatformStatuses(platforms=platforms)


@router.get("/status/{platform}", response_model=PlatformStatus, responses=problem_responses(404))
async def one_status(
    ctx: CtxDep, _: UserRole, platform: Annotated[str, Path(max_length=64)]
) -> PlatformStatus:
    """One platform's configuration and installations; 404 for an unknown platform."""
    service.require_platform(platform)
    async with ctx.db.read() as session:
        (status,) = await service.platform_statuses(
            session, settings=ctx.settings, now=ctx.clock.now(), platforms=[platform]
        )
    return status


@router.post(
    "/installations",
    status_code=201,
    response_model=InstallationPublic,
    responses={200: {"description": "Updated an existing installation"}},
)
async def upsert_installation(
    ctx: CtxDep, _: AgentRole, body: InstallationUpsert, response: Response
) -> InstallationPublic:
    """Report an installation: 201 when new, 200 when (platform, organization) existed."""
    now = ctx.clock.now()
    async with ctx.db.write() as session:
        row, created = await service.upsert_installation(session, body=body, now=now)
        public = service.installation_public(row, settings=ctx.settings, now=now)
    if not created:
        response.status_code = 200
    return public


@router.delete(
    "/installations/{installation_id}", status_code=204, responses=problem_responses(404)
)
async def delete_installation(
    ctx: CtxDep, _: AdminRole, installation_id: Annotated[str, Path(max_length=64)]
) -> Response:
    """Forget an installation."""
    async with ctx.db.write() as session:
        await service.delete_installation(session, installation_id=installation_id)
    return Response(status_code=204)
