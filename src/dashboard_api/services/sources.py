"""Knowledge sources: typed configs, identity, and re-index jobs as a claimable queue.

Lock order, everywhere: the source row first, then its job rows. Claims take both with
SKIP LOCKED, so a claimer never waits on (or deadlocks with) a delete, a re-index request
or a progress report of the same source.

A running job holds a lease (docs/api.md §13), renewed by its PATCHes; the lease reaper
(`expire_jobs`) fails a job whose lease ran out, and a re-index request does the same for
the source's stuck job before queueing a new one.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard_api.db.dialect import dialect_of
from dashboard_api.db.engine import emit
from dashboard_api.db.models.sources import ACTIVE_JOB_STATUSES, DataSource, IndexJob
from dashboard_api.db.paging import Ordering, PageRequest, PageResult, paginate
from dashboard_api.errors import Conflict, NotFound
from dashboard_api.ids import new_id
from dashboard_api.schemas.sources import (
    ConfluenceSpaceConfig,
    GithubRepoConfig,
    JiraProjectConfig,
    JobPublic,
    JobUpdate,
    SourceCreate,
    SourcePublic,
    job_public,
    source_public,
)
from dashboard_api.services.leases import (
    LEASE_EXPIRED_ERROR,
    MIN_LEASE_SECONDS,
    lease_end,
    renewed,
)

ENDED_JOB_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
JOB_MOVES: dict[str, frozenset[str]] = {
    "queued": frozenset({"running", "cancelled"}),
    "running": frozenset({"succeeded", "failed", "cancelled"}),
}
_JOBS_NEWEST_FIRST = Ordering(
    "-created_at", (IndexJob.created_at, IndexJob.job_id), descending=True
)
_CLAIM_CANDIDATES = 16


def _site(url: str) -> str:
    """The host of a site URL, lower-cased, with a non-default port."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    return f"{host}:{parts.port}" if parts.port not in (None, 443) else host


def identity_of(config: GithubRepoConfig | JiraProjectConfig | ConfluenceSpaceConfig) -> str:
    """The normalized identity that makes two sources the same one.

    GitHub: owner/repo/branch, case-insensitive. A source without `branch` follows the
    repository's default branch, which we cannot name without asking GitHub, so it is an
    identity of its own: `o/r` (default branch) and `o/r@main` may both exist.
    Jira: site host (+ port) and project key. Confluence: site host and space key (space
    keys compared exactly, hosts case-insensitively). Paths of the site URL are ignored.
    """
    if isinstance(config, GithubRepoConfig):
        base = f"github_repo:{config.owner.casefold()}/{config.repo.casefold()}"
        return f"{base}@{config.branch.casefold()}" if config.branch else base
    if isinstance(config, JiraProjectConfig):
        return f"jira_project:{_site(config.site_url)}/{config.project_key}"
    return f"confluence_space:{_site(config.site_url)}/{config.space_key}"


def _default_name(config: GithubRepoConfig | JiraProjectConfig | ConfluenceSpaceConfig) -> str:
    if isinstance(config, GithubRepoConfig):
        name = f"{config.owner}/{config.repo}"
        return f"{name}@{config.branch}" if config.branch else name
    if isinstance(config, JiraProjectConfig):
        return f"{config.project_key} ({_site(config.site_url)})"
    return f"{config.space_key} ({_site(config.site_url)})"


def _publish(session: AsyncSession, job: IndexJob) -> None:
    emit(session, "sources", {"type": "source_job", "job": job_public(job).model_dump(mode="json")})


# --- reads -------------------------------------------------------------------------------


async def _latest_jobs(session: AsyncSession, source_ids: Sequence[str]) -> dict[str, IndexJob]:
    if not source_ids:
        return {}
    rank = (
        func.row_number()
        .over(
            partition_by=IndexJob.source_id,
            order_by=(IndexJob.created_at.desc(), IndexJob.job_id.desc()),
        )
        .label("rank")
    )
    ranked = (
        select(IndexJob.job_id, rank).where(IndexJob.source_id.in_(list(source_ids))).subquery()
    )
    stmt = (
        select(IndexJob).join(ranked, ranked.c.job_id == IndexJob.job_id).where(ranked.c.rank == 1)
    )
    return {j.source_id: j for j in (await session.scalars(stmt)).all()}


async def _source(session: AsyncSession, source_id: str, *, lock: bool = False) -> DataSource:
    stmt: Select[Any] = select(DataSource).where(DataSource.source_id == source_id)
    if lock:
        stmt = dialect_of(session).lock_for_update(stmt).execution_options(populate_existing=True)
    source: DataSource | None = (await session.scalars(stmt)).first()
    if source is None:
        raise NotFound(f"No source {source_id!r}.")
    return source


async def list_sources(session: AsyncSession, *, types: Sequence[str] = ()) -> list[SourcePublic]:
    """Every source (optionally of some types), oldest first, each with its newest job."""
    stmt = select(DataSource).order_by(DataSource.created_at, DataSource.source_id)
    if types:
        stmt = stmt.where(DataSource.type.in_(list(types)))
    sources = (await session.scalars(stmt)).all()
    latest = await _latest_jobs(session, [s.source_id for s in sources])
    return [source_public(s, latest.get(s.source_id)) for s in sources]


async def get_source(session: AsyncSession, *, source_id: str) -> SourcePublic:
    """One source with its newest job, or 404."""
    source = await _source(session, source_id)
    latest = await _latest_jobs(session, [source_id])
    return source_public(source, latest.get(source_id))


async def list_jobs(
    session: AsyncSession, *, source_id: str, page: PageRequest
) -> PageResult[JobPublic]:
    """A source's jobs, newest first; 404 for an unknown (or deleted) source."""
    await _source(session, source_id)
    where = IndexJob.source_id == source_id
    return await paginate(
        session,
        select(IndexJob).where(where),
        _JOBS_NEWEST_FIRST,
        page,
        convert=lambda row: job_public(row[0]),
        count_stmt=select(func.count()).select_from(IndexJob).where(where),
    )


# --- writes ------------------------------------------------------------------------------


async def create_source(
    session: AsyncSession, *, body: SourceCreate, now: datetime
) -> SourcePublic:
    """Add a source (status `pending`, no job). 409 when its identity exists."""
    identity = identity_of(body.config)
    existing = (
        await session.scalars(select(DataSource.source_id).where(DataSource.identity == identity))
    ).first()
    if existing is not None:
        raise Conflict(
            f"A {body.type} source with this identity exists: {existing}.",
            extra={"source_id": existing},
        )
    source = DataSource(
        source_id=new_id(),
        type=body.type,
        name=body.name or _default_name(body.config)[:255],
        config=body.config.model_dump(mode="json", exclude_none=True),
        identity=identity,
        enabled=body.enabled,
        status="pending",
        last_indexed_at=None,
        last_error=None,
        created_at=now,
        updated_at=now,
    )
    session.add(source)
    # The unique index settles a race between two creators (IntegrityError -> 409).
    await session.flush()
    return source_public(source, None)


async def _active_jobs(session: AsyncSession, source_id: str) -> Sequence[IndexJob]:
    stmt = select(IndexJob).where(
        IndexJob.source_id == source_id, IndexJob.status.in_(ACTIVE_JOB_STATUSES)
    )
    stmt = dialect_of(session).lock_for_update(stmt).execution_options(populate_existing=True)
    return (await session.scalars(stmt)).all()


async def delete_source(session: AsyncSession, *, source_id: str, now: datetime) -> None:
    """Remove a source; its queued and running jobs become cancelled (and stay listed
    nowhere but in their events; a running indexer's next report gets 409)."""
    source = await _source(session, source_id, lock=True)
    for job in await _active_jobs(session, source_id):
        _end(job, "cancelled", now)
        _publish(session, job)
    await session.delete(source)


async def request_reindex(
    session: AsyncSession, *, source_id: str, now: datetime
) -> tuple[IndexJob, bool]:
    """Queue a job unless one is queued or running: (job, created). A running job whose
    lease has run out is failed first (the reaper would have), so a dead indexer never
    blocks re-indexing."""
    # The source row lock serializes concurrent requests; the partial unique index on
    # active jobs is the backstop.
    source = await _source(session, source_id, lock=True)
    active = list(await _active_jobs(session, source_id))
    for job in active:
        if _lease_ran_out(job, now):
            _expire(session, job, source, now)
    active = [job for job in active if job.status in ACTIVE_JOB_STATUSES]
    if active:
        return active[0], False
    job = IndexJob(
        job_id=new_id(),
        source_id=source_id,
        status="queued",
        progress=0.0,
        agent=None,
        error=None,
        created_at=now,
        started_at=None,
        finished_at=None,
        updated_at=now,
    )
    session.add(job)
    await session.flush()
    _publish(session, job)
    return job, True


async def claim_job(
    session: AsyncSession, *, agent: str | None, now: datetime, lease_seconds: int
) -> tuple[IndexJob, DataSource] | None:
    """Move the oldest claimable queued job to running, with a lease of `lease_seconds`;
    None when there is none."""
    candidates = (
        await session.execute(
            select(IndexJob.job_id, IndexJob.source_id)
            .where(IndexJob.status == "queued")
            .order_by(IndexJob.created_at, IndexJob.job_id)
            .limit(_CLAIM_CANDIDATES)
        )
    ).all()
    for job_id, source_id in candidates:
        source_stmt = dialect_of(session).lock_skip_locked(
            select(DataSource).where(DataSource.source_id == source_id)
        )
        source = (
            await session.scalars(source_stmt.execution_options(populate_existing=True))
        ).first()
        if source is None:  # being changed by someone else right now
            continue
        job_stmt = dialect_of(session).lock_skip_locked(
            select(IndexJob).where(IndexJob.job_id == job_id, IndexJob.status == "queued")
        )
        job = (await session.scalars(job_stmt.execution_options(populate_existing=True))).first()
        if job is None:  # taken meanwhile
            continue
        job.agent = agent
        job.lease_seconds = lease_seconds
        _start(job, source, now)
        await session.flush()
        _publish(session, job)
        return job, source
    return None


async def update_job(
    session: AsyncSession, *, job_id: str, body: JobUpdate, now: datetime, lease_seconds: int
) -> IndexJob:
    """Report progress or move a job; its source's status follows. 409 once ended.

    Any update of a running job renews its lease (lazily, see services/leases.py); one
    entering running gets a lease of its own length, else of `lease_seconds`."""
    found = await session.get(IndexJob, job_id)
    if found is None:
        raise NotFound(f"No job {job_id!r}.")
    source: DataSource | None = None
    try:
        source = await _source(session, found.source_id, lock=True)
    except NotFound:
        source = None  # deleted: its jobs were cancelled, so this update ends in a 409
    stmt = dialect_of(session).lock_for_update(select(IndexJob).where(IndexJob.job_id == job_id))
    job: IndexJob = (await session.scalars(stmt.execution_options(populate_existing=True))).one()

    if job.status in ENDED_JOB_STATUSES:
        repeat = (
            body.status in (None, job.status)
            and body.progress in (None, job.progress)
            and body.error in (None, job.error)
        )
        if repeat:
            return job  # a retried final report is harmless
        raise Conflict(
            f"Job {job_id!r} is {job.status}; it cannot change any more.",
            extra={"current_status": job.status},
        )
    target = body.status if body.status not in (None, job.status) else None
    if target is not None and target not in JOB_MOVES[job.status]:
        raise Conflict(
            f"Job {job_id!r} is {job.status}; it cannot move to {target}.",
            extra={"current_status": job.status},
        )

    changed = False
    if body.progress is not None and body.progress != job.progress:
        job.progress = body.progress
        changed = True
    if body.error is not None and body.error != job.error:
        job.error = body.error
        changed = True
    if target == "running":
        assert source is not None  # a live job's source exists (deletion cancels jobs)
        job.lease_seconds = job.lease_seconds or lease_seconds
        _start(job, source, now)
        changed = True
    elif target is not None:
        _end(job, target, now, source)
        changed = True
    elif job.status == "running":
        renewal = renewed(job.lease_expires_at, job.lease_seconds or lease_seconds, now)
        if renewal is not None:
            job.lease_expires_at = renewal
            if not changed:
                # A renewal alone is not news: no event, the row keeps its updated_at.
                await session.flush()
                return job
    if changed:
        job.updated_at = now
        await session.flush()
        _publish(session, job)
    return job


async def expire_jobs(session: AsyncSession, *, now: datetime, limit: int = 100) -> list[IndexJob]:
    """Fail running jobs whose lease ran out before `now` (the lease reaper): each
    becomes `failed` with error "lease expired", its source `failed`.

    Lock order as everywhere (source, then job), both with SKIP LOCKED: a source or job
    being written right now is left for the next run. The job is re-read under its lock
    with the expiry condition, so a PATCH that renewed the lease first wins, and one
    arriving after the move finds the job ended (409)."""
    candidates = (
        await session.execute(
            select(IndexJob.job_id, IndexJob.source_id)
            .where(IndexJob.status == "running", IndexJob.lease_expires_at < now)
            .order_by(IndexJob.lease_expires_at)
            .limit(limit)
        )
    ).all()
    expired: list[IndexJob] = []
    for job_id, source_id in candidates:
        source_stmt = dialect_of(session).lock_skip_locked(
            select(DataSource).where(DataSource.source_id == source_id)
        )
        source = (
            await session.scalars(source_stmt.execution_options(populate_existing=True))
        ).first()
        if source is None:  # being written right now: the next run
            continue
        job_stmt = dialect_of(session).lock_skip_locked(
            select(IndexJob).where(
                IndexJob.job_id == job_id,
                IndexJob.status == "running",
                IndexJob.lease_expires_at < now,
            ),
        )
        job = (await session.scalars(job_stmt.execution_options(populate_existing=True))).first()
        if job is None:  # renewed, ended or being written meanwhile
            continue
        _expire(session, job, source, now)
        expired.append(job)
    await session.flush()
    return expired


def _lease_ran_out(job: IndexJob, now: datetime) -> bool:
    return (
        job.status == "running" and job.lease_expires_at is not None and job.lease_expires_at < now
    )


def _expire(session: AsyncSession, job: IndexJob, source: DataSource | None, now: datetime) -> None:
    job.error = LEASE_EXPIRED_ERROR
    _end(job, "failed", now, source)
    _publish(session, job)


def _start(job: IndexJob, source: DataSource, now: datetime) -> None:
    job.status = "running"
    job.started_at = now
    job.updated_at = now
    job.lease_expires_at = lease_end(now, job.lease_seconds or MIN_LEASE_SECONDS)
    source.status = "indexing"
    source.updated_at = now


def _end(job: IndexJob, status: str, now: datetime, source: DataSource | None = None) -> None:
    job.status = status
    job.finished_at = now
    job.updated_at = now
    job.lease_expires_at = None
    if status == "succeeded":
        job.progress = 1.0
    if source is None:
        return
    if status == "succeeded":
        source.status = "ready"
        source.last_indexed_at = now
        source.last_error = None
    elif status == "failed":
        source.status = "failed"
        source.last_error = job.error or "Indexing failed."
    elif source.status == "indexing":
        # Cancelled mid-run: back to what the last finished run left (a failed run leaves
        # `last_error`, a successful one clears it).
        if source.last_error:
            source.status = "failed"
        else:
            source.status = "ready" if source.last_indexed_at else "pending"
    source.updated_at = now
