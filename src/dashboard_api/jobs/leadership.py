"""Who leads a periodic job: one replica at a time per job.

PostgreSQL: a session-level advisory lock per job (`pg_try_advisory_lock`), held on one
dedicated connection of this replica for as long as it leads. The server releases the
locks when that session ends, so a replica that dies (or whose connection does) loses
its leads, and another takes them at its next tick. The connection is in autocommit:
it never sits idle in a transaction (which would hold back vacuum).

SQLite: one process owns the database file (`serve --workers` needs PostgreSQL), so the
lead is decided in the process, per database file; several apps in one process (tests)
still get one leader per job.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from typing import Protocol

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from dashboard_api.db.engine import Database

log = logging.getLogger(__name__)


class Leadership(Protocol):
    """Decides, job by job, whether this replica runs it."""

    async def hold(self, job: str) -> bool:
        """Whether this replica leads `job` now, taking the lead when it is free. Raises
        when that cannot be known (the database is down): the caller treats it as False."""
        ...

    async def close(self) -> None:
        """Give up every lead held (another replica takes them at its next tick)."""
        ...


def lock_key(job: str) -> int:
    """The advisory lock key of a job: a stable signed 64-bit hash of its name."""
    digest = hashlib.blake2b(f"dashboard_api.jobs:{job}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class AdvisoryLockLeadership:
    """Leads held as PostgreSQL session advisory locks on one dedicated connection."""

    def __init__(self, url: str, *, timeout: float = 5.0) -> None:
        self._url = url
        self._timeout = timeout
        self._engine: AsyncEngine | None = None
        self._conn: AsyncConnection | None = None
        self._held: set[str] = set()
        self._lock = asyncio.Lock()  # one statement at a time on the connection

    async def hold(self, job: str) -> bool:
        async with self._lock:
            try:
                async with asyncio.timeout(self._timeout):
                    conn = await self._connection()
                    if job in self._held:
                        # The session is alive, so its locks are still ours.
                        await conn.execute(text("SELECT 1"))
                        return True
                    taken = await conn.scalar(
                        text("SELECT pg_try_advisory_lock(:key)"), {"key": lock_key(job)}
                    )
            except BaseException:
                await self._drop()
                raise
            if taken:
                self._held.add(job)
                log.info("leading job %s", job)
            return bool(taken)

    async def close(self) -> None:
        async with self._lock:
            # Closing the session releases every lock it holds.
            await self._drop(quiet=True)
            if self._engine is not None:
                await self._engine.dispose()
                self._engine = None

    async def _connection(self) -> AsyncConnection:
        if self._conn is None:
            if self._engine is None:
                # Its own engine, without a pool: the lock connection is not one of the
                # request pool's, and a dropped one is closed, not reused.
                self._engine = create_async_engine(
                    self._url,
                    poolclass=NullPool,
                    connect_args={"timeout": self._timeout, "command_timeout": self._timeout},
                )
            conn = await self._engine.connect()
            self._conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        return self._conn

    async def _drop(self, *, quiet: bool = False) -> None:
        """Forget the connection (and with it every lead), closing it if it still answers."""
        conn, self._conn = self._conn, None
        if self._held and not quiet:
            log.warning("lost the lead of jobs %s (lock connection dropped)", sorted(self._held))
        self._held.clear()
        if conn is None:
            return
        try:
            async with asyncio.timeout(self._timeout):
                await conn.close()
        except asyncio.CancelledError:
            await conn.invalidate()
            raise
        except Exception as exc:  # the connection is gone anyway
            log.debug("closing the job lock connection failed: %s", exc)


# (database file, job) -> the leadership object leading it, for every app in this process.
_LOCAL_LEADS: dict[tuple[str, str], LocalLeadership] = {}


class LocalLeadership:
    """Leads decided inside this process, per SQLite database file."""

    def __init__(self, scope: str) -> None:
        self._scope = scope
        self._held: set[str] = set()

    async def hold(self, job: str) -> bool:
        leader = _LOCAL_LEADS.setdefault((self._scope, job), self)
        if leader is self and job not in self._held:
            self._held.add(job)
            log.info("leading job %s", job)
        return leader is self

    async def close(self) -> None:
        for job in self._held:
            if _LOCAL_LEADS.get((self._scope, job)) is self:
                del _LOCAL_LEADS[(self._scope, job)]
        self._held.clear()


def leadership_for(db: Database, *, timeout: float = 5.0) -> Leadership:
    """Advisory locks on PostgreSQL; in-process leads per database file on SQLite."""
    if db.backend == "postgresql":
        return AdvisoryLockLeadership(db.url, timeout=timeout)
    path = db.engine.url.database
    if path and path != ":memory:" and not path.startswith("file::memory:"):
        scope = os.path.realpath(path)
    else:
        scope = f"memory:{id(db)}"  # an in-memory database is this Database's alone
    return LocalLeadership(scope)
