"""The lease reaper (periodic job `lease-reaper`): fails running tasks and index jobs
whose lease ran out (API.md §13), on one replica at a time.

Each run first probes, in a read, whether anything has expired (one index range each on
the partial lease indexes): the usual answer is no, and then no write transaction is
opened (on SQLite that would take the process's write lock every few seconds).
"""

from __future__ import annotations

import logging

from sqlalchemy import exists, select

from dashboard_api.context import AppContext
from dashboard_api.db.models.sources import IndexJob
from dashboard_api.observability.setup import metrics_of
from dashboard_api.services import sources

log = logging.getLogger(__name__)

# Rows failed per transaction; a backlog drains over consecutive runs.
BATCH = 100


async def reap_expired_leases(ctx: AppContext) -> int:
    """Fail what has expired by now; how many tasks and jobs it failed."""
    now = ctx.clock.now()
    async with ctx.db.read() as session:
        jobs_due = await session.scalar(
            select(exists().where(IndexJob.status == "running", IndexJob.lease_expires_at < now))
        )
    failed = 0
    if jobs_due:
        async with ctx.db.write() as session:
            expired = await sources.expire_jobs(session, now=now, limit=BATCH)
        for job in expired:
            log.info("index job %s failed: its lease ran out", job.job_id)
        metrics_of(ctx).index_job_leases_expired.inc(len(expired))
        failed += len(expired)
    return failed
