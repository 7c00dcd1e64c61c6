"""`/api/sources`: knowledge sources (admin), re-index jobs (claimed and reported by agents)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Path, Query, Response

from dashboard_api.api.deps import (
    MULTI_DESCRIPTION,
    AdminRole,
    AgentRole,
    CtxDep,
    PageDep,
    UserRole,
    choice_items,
    split_multi,
)
from dashboard_api.db.models.sources import SOURCE_TYPES
from dashboard_api.schemas.common import Items, Page, problem_responses
from dashboard_api.schemas.sources import (
    ClaimedJob,
    JobClaim,
    JobPublic,
    JobUpdate,
    SourceCreate,
    SourcePublic,
    job_public,
    source_public,
)
from dashboard_api.services import sources as service

router = APIRouter(
    prefix="/api/sources", tags=["sources"], responses=problem_responses(401, 403, 422)
)
IdPath = Annotated[str, Path(max_length=64)]


@router.post(
    "/jobs/claim",
    response_model=ClaimedJob,
    responses={204: {"description": "No queued job"}},
)
async def claim_job(
    ctx: CtxDep, _: AgentRole, body: Annotated[JobClaim | None, Body()] = None
) -> ClaimedJob | Response:
    """Take the oldest queued job, now running (with its source, so the indexer knows what)."""
    async with ctx.db.write() as session:
        claimed = await service.claim_job(
            session,
            agent=body.agent if body else None,
            now=ctx.clock.now(),
            lease_seconds=(body.lease_seconds if body else None) or ctx.settings.task_lease_seconds,
        )
        if claimed is None:
            return Response(status_code=204)
        job, source = claimed
        return ClaimedJob(**job_public(job).model_dump(), source=source_public(source, job))


@router.patch("/jobs/{job_id}", response_model=JobPublic, responses=problem_responses(404, 409))
async def update_job(ctx: CtxDep, _: AgentRole, job_id: IdPath, body: JobUpdate) -> JobPublic:
    """Report progress, or move the job: running, then succeeded or failed; or cancelled.
    Every PATCH of a running job renews its lease (409 once the reaper has failed it)."""
    async with ctx.db.write() as session:
        job = await service.update_job(
            session,
            job_id=job_id,
            body=body,
            now=ctx.clock.now(),
            lease_seconds=ctx.settings.task_lease_seconds,
        )
        return job_public(job)


@router.get("", response_model=Items[SourcePublic])
async def list_sources(
    ctx: CtxDep,
    _: UserRole,
    type: Annotated[
        list[Annotated[str, choice_items(SOURCE_TYPES)]] | None,
        Query(description=MULTI_DESCRIPTION),
    ] = None,
) -> Items[SourcePublic]:
    """Every source, oldest first, with its newest job."""
    types = split_multi(type, name="type", allowed=SOURCE_TYPES)
    async with ctx.db.read() as session:
        items = await service.list_sources(session, types=types)
    return Items[SourcePublic](items=items)


@router.post("", status_code=201, response_model=SourcePublic, responses=problem_responses(409))
async def create_source(ctx: CtxDep, _: AdminRole, body: SourceCreate) -> SourcePublic:
    """Add a source (no job is queued). The same identity again is 409."""
    async with ctx.db.write() as session:
        return await service.create_source(session, body=body, now=ctx.clock.now())


@router.get("/{source_id}", response_model=SourcePublic, responses=problem_responses(404))
async def get_source(ctx: CtxDep, _: UserRole, source_id: IdPath) -> SourcePublic:
    """One source."""
    async with ctx.db.read() as session:
        return await service.get_source(session, source_id=source_id)


@router.delete("/{source_id}", status_code=204, responses=problem_responses(404))
async def delete_source(ctx: CtxDep, _: AdminRole, source_id: IdPath) -> Response:
    """Remove a source; its queued and running jobs become cancelled."""
    async with ctx.db.write() as session:
        await service.delete_source(session, source_id=source_id, now=ctx.clock.now())
    return Response(status_code=204)


@router.post(
    "/{source_id}/reindex",
    status_code=202,
    response_model=JobPublic,
    responses={
        **problem_responses(404),
        200: {"description": "A job was already queued or running; that job"},
    },
)
async def reindex(ctx: CtxDep, _: AdminRole, source_id: IdPath, response: Response) -> JobPublic:
    """Queue a re-index job, unless one is already queued or running."""
    async with ctx.db.write() as session:
        job, created = await service.request_reindex(
            session, source_id=source_id, now=ctx.clock.now()
        )
        public = job_public(job)
    if not created:
        response.status_code = 200
    return public


@router.get("/{source_id}/jobs", response_model=Page[JobPublic], responses=problem_responses(404))
async def list_jobs(ctx: CtxDep, _: UserRole, source_id: IdPath, page: PageDep) -> Page[JobPublic]:
    """A source's jobs, newest first."""
    async with ctx.db.read() as session:
        result = await service.list_jobs(session, source_id=source_id, page=page)
    return Page[JobPublic].of(result)
