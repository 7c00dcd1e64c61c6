"""The lease reaper (periodic job `lease-reaper`): fails running tasks and index jobs
whose lease ran out (docs/api.md §13), on one replica at a time.

Each run first probes, in a read, whether anything has expired (one index range each on
the partial lease indexes): the usual answer is no, and then no write transaction is
opened (on SQLite that would take the process's write lock every few seconds).
"""

from __future__ import annotations

import logging

from sqlalchemy import exists, select

from dashboard_api.context import AppContext
from dashboard_api.db.models import Task
from dashboard_api.db.models.sources import IndexJob
from dashboard_api.observability.setup import metrics_of
from dashboard_api.services import sources, tasks

log = logging.getLogger(__name__)

# Rows failed per transaction; a backlog drains over consecutive runs.
BATCH = 100


async def reap_expired_leases(ctx: AppContext) -> int:
    """Fail what has expired by now; how many tasks and jobs it failed."""
    now = ctx.clock.now()
    async with ctx.db.read() as session:
        tasks_due = await session.scalar(
            select(exists().where(Task.status == "running", Task.lease_expires_at < now))
        )
        jobs_due = await session.scalar(
            select(exists().where(IndexJob.status == "running", IndexJob.lease_expires_at < now))
        )
    failed = 0
    metrics = metrics_of(ctx)
    while tasks_due:
        async with ctx.db.write() as session:
            expired = await tasks.expire_tasks(session, now=now, prices=ctx.prices, limit=BATCH)
        for item in expired:
            log.info(
                "task %s failed: its lease ran out (agent %s)",
                item.task.task_id,
                item.task.assigned_agent,
            )
            metrics.leases_expired.labels(item.task.agent_type).inc()
            if item.retry is not None:
                metrics.retries_created.labels("automatic").inc()
        failed += len(expired)
        tasks_due = len(expired) == BATCH  # a backlog: the next batch at once
    if jobs_due:
        async with ctx.db.write() as session:
            ended = await sources.expire_jobs(session, now=now, limit=BATCH)
        for job in ended:
            log.info("index job %s failed: its lease ran out", job.job_id)
        metrics.index_job_leases_expired.inc(len(ended))
        failed += len(ended)
    return failed
