"""The database handle: engine, sessions, the single-writer rule on SQLite, events after commit."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Literal

from sqlalchemy import event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import ConnectionPoolEntry

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


def _sqlite_on_connect(dbapi_conn: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    # Let SQLAlchemy's "begin" hook emit BEGIN itself (the driver's implicit one cannot
    # be made IMMEDIATE), and make the file safe for concurrent readers and one writer.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")  # a 2xx means the commit is on disk
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()
    dbapi_conn.create_function("dashboard_casefold", 1, _casefold, deterministic=True)


def _casefold(value: str | None) -> str | None:
    return None if value is None else value.casefold()


# A pooled connection used this recently is handed out without a ping (HikariCP's
# "alive bypass window"). SQLAlchemy's pre-ping costs BEGIN, a query and ROLLBACK on every
# checkout, as much as a whole read request; a connection that died inside the window
# fails its query instead, which invalidates the pool (503 once, like any outage).
PING_AFTER_IDLE_SECONDS = 1.0
_RETURNED_AT = "dashboard_returned_at"


def _note_checkin(_dbapi_conn: DBAPIConnection, record: ConnectionPoolEntry) -> None:
    record.info[_RETURNED_AT] = time.monotonic()


def _ping_if_idle(dbapi_conn: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
    returned_at = record.info.get(_RETURNED_AT)
    if returned_at is not None and time.monotonic() - returned_at < PING_AFTER_IDLE_SECONDS:
        return
    try:
        dbapi_conn.ping()
    except Exception as error:
        # The pool discards this connection and checks out another (or a new one).
        raise sa_exc.DisconnectionError(str(error)) from error


# The service's queries are short and read through indexes, but some (a 30-day histogram
# sum, an exact count over a broad filter) are estimated above `jit_above_cost`: compiling
# them took 70 ms of a 125 ms answer that runs in 20 ms without. Maintenance commands
# (command_timeout None), whose scans of millions of rows gain from JIT, keep it.
_SERVICE_SETTINGS = {"jit": "off"}


class Database:
    """One per app. Writes go through `write()`, which serializes writers on SQLite."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        echo: bool = False,
        command_timeout: float | None = 60,
    ) -> None:
        self.url = url
        self.backend: Literal["postgresql", "sqlite"] = (
            "sqlite" if url.startswith("sqlite") else "postgresql"
        )
        kwargs: dict[str, Any] = {"echo": echo}
        if self.backend == "postgresql":
            kwargs.update(
                # Up to twice `pool_size` connections, every one kept once opened. An
                # overflow connection is closed at checkin: with the overflow as large
                # as the pool, 32 concurrent list requests opened a new session (a
                # backend process, authentication, an empty statement cache) for one
                # request in eight.
                pool_size=2 * pool_size,
                max_overflow=0,
                # Checked on checkout by _ping_if_idle instead (a ping is three round trips).
                pool_pre_ping=False,
                pool_timeout=10,
                # None for maintenance commands (bulk loads, rebuilds) that run for minutes.
                connect_args={
                    "timeout": 5,
                    "command_timeout": command_timeout,
                    "server_settings": _SERVICE_SETTINGS if command_timeout else {},
                },
            )
        else:
            kwargs.update(connect_args={"timeout": 30})
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        # Reads whose statements need no shared snapshot run in autocommit on PostgreSQL:
        # no BEGIN and ROLLBACK round trips around them (two of a short read's four).
        self._statement_sessions = (
            async_sessionmaker(
                self.engine.execution_options(isolation_level="AUTOCOMMIT"),
                expire_on_commit=False,
            )
            if self.backend == "postgresql"
            else self.sessions
        )
        self.publisher: Publisher | None = None
        self._write_lock = asyncio.Lock() if self.backend == "sqlite" else None
        if self.backend == "postgresql":
            event.listen(self.engine.sync_engine.pool, "connect", _note_checkin)
            event.listen(self.engine.sync_engine.pool, "checkin", _note_checkin)
            event.listen(self.engine.sync_engine.pool, "checkout", _ping_if_idle)
        if self.backend == "sqlite":
            sync_engine = self.engine.sync_engine
            event.listen(sync_engine, "connect", _sqlite_on_connect)

            @event.listens_for(sync_engine, "begin")
            def _begin(conn: Any) -> None:
                mode = "IMMEDIATE" if conn.get_execution_options().get("dashboard_write") else ""
                conn.exec_driver_sql(f"BEGIN {mode}".strip())

    def configure_sessions(self, info: dict[str, Any]) -> None:
        """Hand `info` (what the services read of the app: settings, shared caches, the
        task write hooks) to every session of this database."""
        self.sessions.configure(info=info)
        if self._statement_sessions is not self.sessions:
            self._statement_sessions.configure(info=info)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A session for reads; its transaction is rolled back at the end."""
        async with self.sessions() as session:
            yield session

    @asynccontextmanager
    async def read_statements(self) -> AsyncIterator[AsyncSession]:
        """A session for reads whose statements each see what was committed before them,
        and need no snapshot in common: the same as `read()` under PostgreSQL's READ
        COMMITTED, without its BEGIN and ROLLBACK (autocommit). On SQLite, `read()`."""
        async with self._statement_sessions() as session:
            yield session

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """A transaction committed on exit; queued events are published after the commit."""
        async with self._write_lock or contextlib.nullcontext(), self.sessions() as session:
            try:
                # Takes the SQLite write lock up front (BEGIN IMMEDIATE): a deferred
                # transaction that upgrades later can fail with "database is locked".
                await session.connection(execution_options={"dashboard_write": True})
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
        return self.backend == "postgresql"

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
        while _checked_out(self.engine) and loop.time() < deadline:
            await asyncio.sleep(0.01)
        if left := _checked_out(self.engine):
            log.warning("disposing the database pool with %d connection(s) still in use", left)
        await self.engine.dispose()


def _checked_out(engine: AsyncEngine) -> int:
    checkedout = getattr(engine.sync_engine.pool, "checkedout", None)
    return int(checkedout()) if checkedout is not None else 0
