"""Named locks that one process at a time holds, among all that share a database.

PostgreSQL (`AdvisoryLocks`): a session-level advisory lock per name
(`pg_try_advisory_lock`), held on one dedicated connection of this process for as long
as it is held. The server releases the locks when that session ends, so a process that
dies (or whose connection does) loses them, and another takes them at its next try. The
connection is in autocommit: it never sits idle in a transaction (which would hold back
vacuum).

SQLite (`ProcessLocks`): one process owns the database file (`serve --workers` needs
PostgreSQL), so the locks are decided in the process, per database file; several apps
in one process (tests) still get one holder per name.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

log = logging.getLogger(__name__)


class NamedLocks(Protocol):
    """Locks by name; `what` names what a lock leads, in the log ('job')."""

    async def hold(self, name: str) -> bool:
        """Whether this process holds `name` now, taking it when it is free. Raises when
        that cannot be known (the database is down): the caller treats it as False."""
        ...

    async def close(self) -> None:
        """Release every lock held (another process takes them at its next try)."""
        ...


class AdvisoryLocks:
    """Locks held as PostgreSQL session advisory locks on one dedicated connection."""

    def __init__(self, url: str, *, timeout: float, key: Callable[[str], int], what: str) -> None:
        self._url = url
        self._timeout = timeout
        self._key = key
        self._what = what
        self._engine: AsyncEngine | None = None
        self._conn: AsyncConnection | None = None
        self._held: set[str] = set()
        self._lock = asyncio.Lock()  # one statement at a time on the connection

    async def hold(self, name: str) -> bool:
        async with self._lock:
            try:
                async with asyncio.timeout(self._timeout):
                    conn = await self._connection()
                    if name in self._held:
                        # The session is alive, so its locks are still ours.
                        await conn.execute(text("SELECT 1"))
                        return True
                    taken = await conn.scalar(
                        text("SELECT pg_try_advisory_lock(:key)"), {"key": self._key(name)}
                    )
            except BaseException:
                await self._drop()
                raise
            if taken:
                self._held.add(name)
                log.info("leading %s %s", self._what, name)
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
        """Forget the connection (and with it every lock), closing it if it still answers."""
        conn, self._conn = self._conn, None
        if self._held and not quiet:
            log.warning(
                "lost the lead of %ss %s (lock connection dropped)", self._what, sorted(self._held)
            )
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
            log.debug("closing the lock connection failed: %s", exc)


# (scope: the database file, lock name) -> the holder, for every app in this process.
_HOLDERS: dict[tuple[str, str], ProcessLocks] = {}


class ProcessLocks:
    """Locks decided inside this process, per `scope` (a SQLite database file)."""

    def __init__(self, scope: str, *, what: str) -> None:
        self._scope = scope
        self._what = what
        self._held: set[str] = set()

    async def hold(self, name: str) -> bool:
        holder = _HOLDERS.setdefault((self._scope, name), self)
        if holder is self and name not in self._held:
            self._held.add(name)
            log.info("leading %s %s", self._what, name)
        return holder is self

    async def close(self) -> None:
        for name in self._held:
            if _HOLDERS.get((self._scope, name)) is self:
                del _HOLDERS[(self._scope, name)]
        self._held.clear()
