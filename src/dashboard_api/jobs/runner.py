"""The periodic-job runner: every periodic job on one replica at a time.

A job is a name, an interval and a coroutine function doing one run. Each replica runs a
loop per job: sleep the interval, ask the leadership (jobs/leadership.py) whether it leads
the job (taking the lead when it is free), and if so run it once. So a job has one leader
at a time across replicas, and when the leader stops or dies another replica takes over
at its next tick (within one interval).

A run that raises is logged (with its traceback the first time in a row, one line after
that) and counted; the loop goes on and the job runs again at the next interval. A run is
not retried sooner: jobs are written to pick up whatever the previous run left (a
conditional update, a batch that commits or rolls back whole).

Leadership is checked before each run, not during it: a leader whose lock connection
drops in the middle of a run finishes that run while another replica may start one. Jobs
are written so that such an overlap is harmless (their writes are conditional updates or
take a lock of their own), and the usual case, a replica that stops or dies, has none.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from dashboard_api.aiotasks import raise_if_cancelled, stop_tasks
from dashboard_api.jobs.leadership import Leadership

log = logging.getLogger(__name__)

# How long `JobRunner.stop` lets a run in progress finish before cancelling it.
STOP_RUN_GRACE_SECONDS = 5.0


@dataclass(frozen=True)
class Job:
    """A periodic job: `run` does one run; it runs every `every` seconds on one replica."""

    name: str
    every: float
    run: Callable[[], Awaitable[object]]


@dataclass
class JobStats:
    """What `/metrics` shows of a job on this replica."""

    runs: int = 0
    failures: int = 0
    seconds: float = 0.0  # total time spent in runs
    last_seconds: float | None = None
    leader: bool = False
    failing_since: int = 0  # failures in a row (0 after a good run)


class JobRunner:
    """Runs the jobs added to it, each where this replica leads it, until stopped."""

    def __init__(self, leadership: Leadership) -> None:
        self.leadership = leadership
        self.jobs: dict[str, Job] = {}
        self.stats: dict[str, JobStats] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()

    def add(self, job: Job) -> None:
        """Schedule a job (before `start`). A job with `every` <= 0 is off."""
        if job.name in self.jobs:
            raise ValueError(f"a job named {job.name!r} is already scheduled")
        if job.every <= 0:
            return
        self.jobs[job.name] = job
        self.stats[job.name] = JobStats()

    def start(self) -> None:
        """Start one loop per job."""
        for job in self.jobs.values():
            self._tasks.append(asyncio.create_task(self._loop(job), name=f"job-{job.name}"))

    async def stop(self, *, grace: float = STOP_RUN_GRACE_SECONDS) -> None:
        """End the loops, then give up every lead.

        A loop between runs ends at once; a run in progress is given `grace` seconds to
        finish before it is cancelled. Cancelling a run in the middle of a database call
        is what shutdowns should avoid: an aiosqlite connection cancelled while it opens
        finishes in its own thread after the event loop has closed ("Event loop is
        closed"), and a PostgreSQL statement cancelled mid-flight costs a connection.
        """
        self._stopping.set()
        running = [t for t in self._tasks if not t.done()]
        if running:
            await asyncio.wait(running, timeout=grace)
        await stop_tasks(self._tasks, what="periodic jobs")
        self._tasks.clear()
        try:
            await self.leadership.close()
        finally:
            for stats in self.stats.values():
                stats.leader = False

    async def tick(self, name: str) -> bool:
        """One tick of a job: run it if this replica leads it; whether it ran."""
        job, stats = self.jobs[name], self.stats[name]
        try:
            stats.leader = await self.leadership.hold(name)
        except asyncio.CancelledError:
            stats.leader = False
            raise
        except Exception as exc:  # the database may be down for a while; ask again later
            stats.leader = False
            log.warning("job %s: cannot tell whether this replica leads it: %s", name, exc)
            return False
        if not stats.leader:
            return False
        started = time.perf_counter()
        try:
            await job.run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            stats.failures += 1
            stats.failing_since += 1
            # The traceback once, then one line per run while it keeps failing (an outage).
            log.warning(
                "job %s failed (%d in a row): %s",
                name,
                stats.failing_since,
                exc,
                exc_info=stats.failing_since == 1,
            )
        else:
            stats.failing_since = 0
        finally:
            elapsed = time.perf_counter() - started
            stats.runs += 1
            stats.seconds += elapsed
            stats.last_seconds = elapsed
        return True

    async def _loop(self, job: Job) -> None:
        while not self._stopping.is_set():
            raise_if_cancelled()
            # Sleep the interval, or less when `stop` is called meanwhile.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(job.every):
                    await self._stopping.wait()
            if self._stopping.is_set():
                return
            await self.tick(job.name)
