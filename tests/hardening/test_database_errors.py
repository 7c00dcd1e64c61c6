"""What a database error tells the client: each backend's dialect reads its driver's
errors (`Dialect.classify_error`), and the app answers for the kind of fault, not the
backend: 503 with Retry-After for contention and an unavailable server, 422 for text the
database cannot store, 500 for the rest.

Every error here is a real one, raised by a real PostgreSQL server or SQLite file.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from dashboard_api.app import create_app
from dashboard_api.db.dialect import POSTGRESQL, SQLITE, DatabaseFault
from dashboard_api.settings import Settings
from tests.support.env import PG_ADMIN_URL, require_services


@pytest.fixture
async def pg_engine() -> AsyncIterator[AsyncEngine]:
    require_services()
    engine = create_async_engine(PG_ADMIN_URL, pool_size=2)
    try:
        yield engine
    finally:
        await engine.dispose()


async def _lock_timeout_error(engine: AsyncEngine) -> sa_exc.DBAPIError:
    """A lock wait PostgreSQL gives up on (55P03): another transaction holds the lock."""
    key = 0x5EED_FA17
    async with engine.connect() as holder, holder.begin():
        await holder.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
        async with engine.connect() as waiter, waiter.begin():
            await waiter.execute(text("SET LOCAL lock_timeout = '50ms'"))
            with pytest.raises(sa_exc.DBAPIError) as raised:
                await waiter.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
    return raised.value


async def _nul_text_error(engine: AsyncEngine) -> sa_exc.DBAPIError:
    async with engine.connect() as conn:
        with pytest.raises(sa_exc.DBAPIError) as raised:
            await conn.execute(text("SELECT CAST(:v AS text)"), {"v": "a\x00b"})
    return raised.value


async def test_postgresql_errors_are_classified_by_their_sqlstate(
    pg_engine: AsyncEngine,
) -> None:
    contention = await _lock_timeout_error(pg_engine)
    assert POSTGRESQL.classify_error(contention.orig) is DatabaseFault.CONTENTION
    unstorable = await _nul_text_error(pg_engine)
    assert POSTGRESQL.classify_error(unstorable.orig) is DatabaseFault.UNSTORABLE_TEXT
    async with pg_engine.connect() as conn:
        with pytest.raises(sa_exc.DBAPIError) as raised:
            await conn.execute(text("SELECT 1 / 0"))
    assert POSTGRESQL.classify_error(raised.value.orig) is None  # the statement's own error
    assert POSTGRESQL.classify_error(None) is None


def test_sqlite_busy_file_is_contention(tmp_path: Path) -> None:
    path = tmp_path / "busy.db"
    holder = sqlite3.connect(path, isolation_level=None)
    waiter = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        holder.execute("CREATE TABLE t (x)")
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(sqlite3.OperationalError) as raised:
            waiter.execute("BEGIN IMMEDIATE")
        assert SQLITE.classify_error(raised.value) is DatabaseFault.CONTENTION
        with pytest.raises(sqlite3.OperationalError) as bad:
            waiter.execute("SELECT * FROM no_such_table")
        assert SQLITE.classify_error(bad.value) is None
    finally:
        holder.close()
        waiter.close()


async def test_the_app_answers_by_fault(pg_engine: AsyncEngine, tmp_path: Path) -> None:
    """Real driver errors raised inside a request of an app on PostgreSQL."""
    errors = {
        "contention": await _lock_timeout_error(pg_engine),
        "unstorable": await _nul_text_error(pg_engine),
    }
    async with pg_engine.connect() as conn:
        with pytest.raises(sa_exc.DBAPIError) as raised:
            await conn.execute(text("SELECT 1 / 0"))
    errors["bug"] = raised.value

    # The app is never started: only its error handlers and its dialect are used.
    app = create_app(Settings(database_url="postgresql+asyncpg://postgres@127.0.0.1/none"))

    @app.get("/raise/{kind}")
    async def _raise(kind: str) -> None:
        raise errors[kind]

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        contention = await client.get("/raise/contention")
        assert contention.status_code == 503
        assert contention.headers["retry-after"] == "1"
        assert contention.headers["content-type"] == "application/problem+json"
        assert contention.json()["dependency"] == "database"
        assert "Retry the request" in contention.json()["detail"]

        unstorable = await client.get("/raise/unstorable")
        assert unstorable.status_code == 422
        assert unstorable.json()["errors"][0]["msg"] == "unstorable character"

        bug = await client.get("/raise/bug")
        assert bug.status_code == 500
        assert "division" not in bug.text  # the driver's message stays in the log
