"""`Database.dispose` closes connections that come back after it started (a request the
server cancelled at shutdown, still rolling back) instead of leaving them to the garbage
collector, which would close them through an event loop that may be gone by then."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import text

from dashboard_api.db.engine import Database
from tests.support.env import Backend


async def test_dispose_waits_for_a_connection_still_in_use(backend: Backend) -> None:
    db = Database(backend.database_url)
    in_use = asyncio.Event()
    release = asyncio.Event()
    raw: list[Any] = []

    async def request() -> None:
        async with db.read() as session:
            await session.execute(text("SELECT 1"))
            sync = (await session.connection()).sync_connection
            assert sync is not None
            raw.append(sync.connection.driver_connection)
            in_use.set()
            await release.wait()

    task = asyncio.create_task(request())
    await in_use.wait()
    disposing = asyncio.create_task(db.dispose())
    for _ in range(5):
        await asyncio.sleep(0)
    assert not disposing.done()  # the session is still open
    release.set()
    await task
    await disposing
    (driver,) = raw
    if backend.name == "sqlite":
        assert driver._connection is None  # aiosqlite: closed (its thread stopped)
    else:
        assert driver.is_closed()  # asyncpg
