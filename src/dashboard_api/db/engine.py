"""The database handle: engine, sessions, the single-writer rule on SQLite, events after commit.

What differs between backends is asked of `self.dialect` (db/dialect/), chosen once here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Literal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from dashboard_api.db.dialect import SESSION_KEY, WRITE_OPTION, Dialect, dialect_for_url

log = logging.getLogger(__name__)

# How long `Database.dispose` waits for connections still in use (cancelled requests).
DISPOSE_WAIT_SECONDS = 5.0

# An event to publish once the transaction that produced it has committed.
PendingEvent = tuple[str, dict[str, Any]]
Publisher = Callable[[Sequence[PendingEvent]], Awaitable[None]]

_EVENTS_KEY = "dashboard_pending_events"


def emit(session: AsyncSession, channel: str, payload: dict[str, Any]) -> None:
    """Queue an event on `channel`; it is published only if and after the session commits."""
    session.info.setdefault(_EVENTS_KEY, []).append((channel, payload))


class Database:
    """One per app. Writes go through `write()`, which serializes writers on SQLite."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        echo: bool = False,
        command_timeout: float | None = 60,
        cache_mb: int | None = None,
        mmap_mb: int | None = None,
    ) -> None:
        """`cache_mb`, `mmap_mb`: SQLite's page cache and memory map per connection (the
        dialect's defaults when None; PostgreSQL ignores them)."""
        self.url = url
        # Chosen once: every backend difference below and in the services asks it.
        self.dialect: Dialect = dialect_for_url(url)
        # The backend's name, for reports (status); behaviour asks the dialect.
        self.backend: Literal["postgresql", "sqlite"] = self.dialect.backend
        options = self.dialect.engine_options(pool_size=pool_size, command_timeout=command_timeout)
        self.engine: AsyncEngine = create_async_engine(url, echo=echo, **options)
        self.dialect.install(self.engine, cache_mb=cache_mb, mmap_mb=mmap_mb)
        info = {SESSION_KEY: self.dialect}
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False, info=info)
        # Reads whose statements need no shared snapshot run in autocommit where the
        # dialect allows: no BEGIN and ROLLBACK round trips around them (two of a short
        # read's four).
        self._statement_sessions = (
            async_sessionmaker(
                self.engine.execution_options(isolation_level="AUTOCOMMIT"),
                expire_on_commit=False,
                info=info,
            )
            if self.dialect.reads_in_autocommit
            else self.sessions
        )
        # Reads whose statements plan as well generic (analytics): their own pool, where
        # the dialect has one (see `read_generic`).
        generic = self.dialect.generic_plan_engine_options(
            pool_size=pool_size, command_timeout=command_timeout
        )
        self._generic_engine: AsyncEngine | None = None
        self._generic_sessions = self._statement_sessions
        if generic is not None:
            self._generic_engine = create_async_engine(url, echo=echo, **generic)
            self.dialect.install(self._generic_engine, cache_mb=cache_mb, mmap_mb=mmap_mb)
            self._generic_sessions = async_sessionmaker(
                self._generic_engine.execution_options(isolation_level="AUTOCOMMIT"),
                expire_on_commit=False,
                info=info,
            )
        self.publisher: Publisher | None = None
        self._write_lock = asyncio.Lock() if self.dialect.serializes_writers else None

    def configure_sessions(self, info: dict[str, Any]) -> None:
        """Hand `info` (what the services read of the app: settings, shared caches, the
        task write hooks) to every session of this database, with its dialect."""
        info = {**info, SESSION_KEY: self.dialect}
        self.sessions.configure(info=info)
        if self._statement_sessions is not self.sessions:
            self._statement_sessions.configure(info=info)
        if self._generic_engine is not None:
            self._generic_sessions.configure(info=info)

    @property
    def engines(self) -> tuple[AsyncEngine, ...]:
        """Every engine of this database: the main one, and the generic-plan reads' where
        the dialect has one (what listens to every statement listens to each)."""
        generic = self._generic_engine
        return (self.engine,) if generic is None else (self.engine, generic)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A session for reads; its transaction is rolled back at the end."""
        async with self.sessions() as session:
            yield session

    @asynccontextmanager
    async def read_statements(self) -> AsyncIterator[AsyncSession]:
        """A session for reads whose statements each see what was committed before them,
        and need no snapshot in common: the same as `read()` under PostgreSQL's READ
        COMMITTED, without its BEGIN and ROLLBACK (autocommit). Elsewhere (SQLite), `read()`."""
        async with self._statement_sessions() as session:
            yield session

    @asynccontextmanager
    async def read_generic(self) -> AsyncIterator[AsyncSession]:
        """`read_statements`, on connections whose prepared statements run on generic
        plans (PostgreSQL: planned once per connection, not per execution). Only for
        statements whose generic plan reads what their custom plans read (check with
        `python -m bench.plans --generic`): a generic plan cannot use a filter value's
        selectivity or a partial index that the value matches."""
        async with self._generic_sessions() as session:
            yield session

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """A transaction committed on exit; queued events are published after the commit."""
        async with self._write_lock or contextlib.nullcontext(), self.sessions() as session:
            try:
                # Takes the SQLite write lock up front (BEGIN IMMEDIATE): a deferred
                # transaction that upgrades later can fail with "database is locked".
                await session.connection(execution_options={WRITE_OPTION: True})
                yield session
                await session.commit()
            except BaseException:
                await session.rollback()
                raise
        await self._publish(session)

    @property
    def writes_alone(self) -> bool:
        """Whether `alone()` is available: single-statement writes outside a transaction
        (PostgreSQL; on SQLite every write takes the process's write lock in `write()`)."""
        return self.dialect.writes_alone

    @asynccontextmanager
    async def alone(self) -> AsyncIterator[AsyncConnection]:
        """A PostgreSQL connection whose statements each commit on their own.

        For a write that is a single statement, BEGIN and COMMIT are two round trips (and
        SQLAlchemy's session and transaction bookkeeping) for nothing: the statement is
        its own transaction, committed (WAL flushed: synchronous_commit stays on) when it
        returns. Publish what it produced with `publish` afterwards.
        """
        assert self.writes_alone, "SQLite writes go through write()"
        async with self.engine.connect() as conn:
            yield await conn.execution_options(isolation_level="AUTOCOMMIT")

    async def publish(self, events: Sequence[PendingEvent]) -> None:
        """Publish events of a write that has committed (see `alone`)."""
        if events and self.publisher is not None:
            await self.publisher(events)

    async def _publish(self, session: AsyncSession) -> None:
        await self.publish(session.info.pop(_EVENTS_KEY, []))

    async def ping(self, timeout: float) -> float:
        """Round-trip a trivial query; returns the latency in milliseconds."""
        start = time.perf_counter()
        async with asyncio.timeout(timeout):
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        return (time.perf_counter() - start) * 1000

    async def dispose(self, *, wait: float = DISPOSE_WAIT_SECONDS) -> None:
        """Close the pool's connections, first waiting (at most `wait` seconds) for the
        ones still checked out to come back.

        At shutdown, requests the server cancelled (uvicorn does not wait for them before
        the lifespan ends) are still rolling back. A connection returned after the dispose
        would go back to the discarded pool and stay open until garbage-collected, and
        aiosqlite then closes it through an event loop that may be closed by then: its
        worker thread dies with "Event loop is closed".
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while self._in_use() and loop.time() < deadline:
            await asyncio.sleep(0.01)
        if left := self._in_use():
            log.warning("disposing the database pool with %d connection(s) still in use", left)
        for engine in self.engines:
            await engine.dispose()

    def _in_use(self) -> int:
        return sum(_checked_out(engine) for engine in self.engines)


def _checked_out(engine: AsyncEngine) -> int:
    checkedout = getattr(engine.sync_engine.pool, "checkedout", None)
    return int(checkedout()) if checkedout is not None else 0
