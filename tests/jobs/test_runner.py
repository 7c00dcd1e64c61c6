"""The periodic-job runner: one leader per job across replicas, takeover when the leader
stops or its lock connection dies, failures retried at the next interval, a clean stop.

Two runners on one database stand for two replicas (each its own `Database`, so on
PostgreSQL each its own lock session); the apps test goes through two whole apps.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from dashboard_api.app import create_app
from dashboard_api.db.engine import Database
from dashboard_api.jobs import Job, JobRunner, leadership_for
from dashboard_api.jobs.leadership import lock_key
from tests.support.env import Backend

EVERY = 0.02


async def until(check: Callable[[], bool], *, within: float = 10.0) -> None:
    """Wait (polling) until `check()` holds; fail after `within` seconds."""
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


class Recorder:
    """A job that records which replica ran it, and checks that no two runs overlap."""

    def __init__(self) -> None:
        self.runs: list[str] = []
        self.running: str | None = None
        self.overlaps = 0

    def job(self, replica: str, name: str = "probe", every: float = EVERY) -> Job:
        async def run() -> None:
            if self.running is not None:
                self.overlaps += 1
            self.running = replica
            try:
                await asyncio.sleep(EVERY / 2)
            finally:  # a run cancelled by a stop has ended too
                self.running = None
            self.runs.append(replica)

        return Job(name, every, run)


@asynccontextmanager
async def replica(url: str, *jobs: Job) -> AsyncIterator[JobRunner]:
    db = Database(url)
    runner = JobRunner(leadership_for(db))
    for job in jobs:
        runner.add(job)
    runner.start()
    try:
        yield runner
    finally:
        await runner.stop()
        await db.dispose()


async def test_one_replica_runs_a_job_and_the_other_takes_over(backend: Backend) -> None:
    rec = Recorder()
    async with (
        replica(backend.database_url, rec.job("a")) as a,
        replica(backend.database_url, rec.job("b")) as b,
    ):
        await until(lambda: len(rec.runs) >= 20)
        # One leader: only it ran the job, and it says so; the other does not.
        assert len(set(rec.runs)) == 1, rec.runs
        leader, other = (a, b) if rec.runs[0] == "a" else (b, a)
        assert leader.stats["probe"].leader
        assert not other.stats["probe"].leader
        assert leader.stats["probe"].runs == len(rec.runs)
        assert other.stats["probe"].runs == 0
        await leader.stop()
        before = len(rec.runs)
        await until(lambda: len(rec.runs) >= before + 5)
        assert set(rec.runs[before:]) == {"b" if rec.runs[0] == "a" else "a"}
        assert other.stats["probe"].leader
    assert rec.overlaps == 0


async def test_the_leader_stopping_hands_the_job_over(backend: Backend) -> None:
    rec = Recorder()
    async with replica(backend.database_url, rec.job("a")) as a:
        await until(lambda: len(rec.runs) >= 3)
        async with replica(backend.database_url, rec.job("b")) as b:
            await asyncio.sleep(EVERY * 5)
            assert set(rec.runs) == {"a"}  # a led first and keeps the lead
            await a.stop()
            before = len(rec.runs)
            await until(lambda: rec.runs[before:].count("b") >= 5)
            assert b.stats["probe"].leader
            assert not a.stats["probe"].leader
    assert rec.overlaps == 0


async def test_each_job_has_its_own_leader(backend: Backend) -> None:
    """Leads are per job: a replica leading one job does not block another's."""
    one, two = Recorder(), Recorder()
    async with replica(backend.database_url, one.job("a", "one")) as a:
        await until(lambda: len(one.runs) >= 1)
        async with replica(backend.database_url, two.job("b", "two"), one.job("b", "one")):
            await until(lambda: len(two.runs) >= 3)
            assert set(two.runs) == {"b"}
            assert set(one.runs) == {"a"}
            assert a.stats["one"].leader


async def test_a_failing_run_is_logged_counted_and_retried(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[int] = []

    async def flaky() -> None:
        calls.append(1)
        if len(calls) <= 3:
            raise RuntimeError(f"boom {len(calls)}")

    async with replica(backend.database_url, Job("flaky", EVERY, flaky)) as runner:
        await until(lambda: len(calls) >= 6)
        stats = runner.stats["flaky"]
        assert stats.failures == 3
        assert stats.failing_since == 0
        assert stats.runs >= 6
        assert stats.leader
    failed = [r for r in caplog.records if "job flaky failed" in r.getMessage()]
    assert len(failed) == 3
    # The traceback once per outage, not at every run.
    assert [bool(r.exc_info) for r in failed] == [True, False, False]


async def test_stop_lets_a_short_run_finish(backend: Backend) -> None:
    """A run in progress at stop ends by itself (not cancelled in the middle of its
    database calls) when it takes less than the grace."""
    started, finished = asyncio.Event(), asyncio.Event()

    async def short() -> None:
        started.set()
        await asyncio.sleep(0.3)
        finished.set()

    async with replica(backend.database_url, Job("probe", EVERY, short)) as a:
        await asyncio.wait_for(started.wait(), 10)
        await a.stop(grace=5)
        assert finished.is_set()
        assert a.stats["probe"].failures == 0


async def test_stop_cancels_a_run_past_its_grace_and_releases_the_lead(
    backend: Backend,
) -> None:
    started = asyncio.Event()

    async def slow() -> None:
        started.set()
        await asyncio.sleep(3600)

    rec = Recorder()
    async with replica(backend.database_url, Job("probe", EVERY, slow)) as a:
        await asyncio.wait_for(started.wait(), 10)
        begun = time.monotonic()
        await a.stop(grace=0.5)
        assert time.monotonic() - begun < 5
        assert not a.stats["probe"].leader
        # The lead is free at once: a new replica takes it at its first tick.
        async with replica(backend.database_url, rec.job("b")):
            await until(lambda: len(rec.runs) >= 1)


# PostgreSQL only: the lead is a PostgreSQL session lock.
@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_a_lock_connection_that_dies_loses_the_lead(backend: Backend) -> None:
    """PostgreSQL ends the leader's lock session: its locks go with it, and within a
    few ticks one replica leads again (the old leader reconnects as a candidate)."""
    rec = Recorder()
    async with (
        replica(backend.database_url, rec.job("a")) as a,
        replica(backend.database_url, rec.job("b")) as b,
    ):
        await until(lambda: len(rec.runs) >= 3)
        key = lock_key("probe")
        admin = Database(backend.database_url)
        try:
            async with admin.engine.connect() as conn:
                killed = await conn.scalar(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = "
                        "'advisory' AND classid = :hi AND objid = :lo AND objsubid = 1 "
                        "AND granted AND database = (SELECT oid FROM pg_database WHERE "
                        "datname = current_database())"
                    ),
                    {"hi": (key >> 32) & 0xFFFFFFFF, "lo": key & 0xFFFFFFFF},
                )
                assert killed
        finally:
            await admin.dispose()
        before = len(rec.runs)
        await until(lambda: len(rec.runs) >= before + 10)
        assert a.stats["probe"].leader != b.stats["probe"].leader


def _leaders(metrics_text: str, job: str) -> float:
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == "dashboard_job_leader" and sample.labels.get("job") == job:
                return float(sample.value)
    raise AssertionError(f"no dashboard_job_leader for {job}")


async def test_two_apps_share_the_periodic_jobs(backend: Backend) -> None:
    """Through whole apps: the sweeper and the fold each lead on one app, shown on
    `/metrics`, and move to the other app when their leader stops."""
    overrides = {"agent_sweep_interval_seconds": 0.05, "analytics_fold_interval_seconds": 0.05}

    @asynccontextmanager
    async def app_and_client() -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
        app = create_app(backend.settings(**overrides))
        async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                yield app, client

    async def leads(client: httpx.AsyncClient, job: str) -> float:
        return _leaders((await client.get("/metrics")).text, job)

    async with AsyncExitStack() as first_stack:
        first_app, first = await first_stack.enter_async_context(app_and_client())
        runner = first_app.state.ctx.jobs
        await until(lambda: runner.stats["agent-sweeper"].runs >= 2)
        async with app_and_client() as (_, second):
            await asyncio.sleep(0.3)
            for job in ("agent-sweeper", "analytics-fold"):
                assert await leads(first, job) == 1
                assert await leads(second, job) == 0
            await first_stack.aclose()  # the first replica stops
            deadline = time.monotonic() + 10
            for job in ("agent-sweeper", "analytics-fold"):
                while await leads(second, job) != 1:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.02)
