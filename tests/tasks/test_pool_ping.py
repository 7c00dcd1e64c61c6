"""Pooled PostgreSQL connections: pinged on checkout only after being idle a while, and
kept open once opened."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import text

from dashboard_api.db.dialect import pg_pool as pg_pool_module
from dashboard_api.db.engine import Database
from tests.support.env import Backend

pytestmark = pytest.mark.parametrize("backend", ["postgres"], indirect=True)


async def _backend_pid(db: Database) -> int:
    async with db.read() as session:
        return int((await session.execute(text("SELECT pg_backend_pid()"))).scalar_one())


async def _terminate(url: str, pid: int) -> None:
    admin = Database(url)
    try:
        async with admin.engine.connect() as conn:
            await conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    finally:
        await admin.dispose()


async def test_connection_killed_while_idle_is_replaced_unseen(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pg_pool_module, "PING_AFTER_IDLE_SECONDS", 0.05)
    db = Database(backend.database_url, pool_size=1)
    try:
        pid = await _backend_pid(db)
        await _terminate(backend.database_url, pid)
        await asyncio.sleep(0.2)  # past the window: the checkout pings, and replaces it
        assert await _backend_pid(db) != pid
    finally:
        await db.dispose()


async def test_connection_killed_inside_the_window_fails_once_then_recovers(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pg_pool_module, "PING_AFTER_IDLE_SECONDS", 3600)
    db = Database(backend.database_url, pool_size=1)
    try:
        pid = await _backend_pid(db)
        await _terminate(backend.database_url, pid)
        await asyncio.sleep(0.2)  # let the backend exit; still well inside the window
        with pytest.raises(sa_exc.DBAPIError) as failed:
            await _backend_pid(db)
        assert failed.value.connection_invalidated
        assert await _backend_pid(db) != pid
    finally:
        await db.dispose()


async def test_connections_opened_under_load_stay_open(backend: Backend) -> None:
    """Up to twice the pool size run at once, and every one of them is kept: a pool that
    closed its overflow connections on checkin opened new ones (a backend process each)
    all the time under load."""
    db = Database(backend.database_url, pool_size=2)
    try:

        async def pids_at_once() -> set[int]:
            gate = asyncio.Event()

            async def hold() -> int:
                async with db.read() as session:
                    pid = int((await session.execute(text("SELECT pg_backend_pid()"))).scalar_one())
                    await gate.wait()
                    return pid

            held = [asyncio.create_task(hold()) for _ in range(4)]
            while db.engine.sync_engine.pool.checkedout() < 4:  # type: ignore[attr-defined]
                await asyncio.sleep(0.01)
            gate.set()
            return set(await asyncio.gather(*held))

        first = await pids_at_once()
        assert len(first) == 4
        assert await pids_at_once() == first
    finally:
        await db.dispose()


async def test_service_connections_run_without_jit_and_maintenance_ones_with(
    backend: Backend,
) -> None:
    async def jit(db: Database) -> str:
        try:
            async with db.read() as session:
                return str((await session.execute(text("SHOW jit"))).scalar_one())
        finally:
            await db.dispose()

    assert await jit(Database(backend.database_url)) == "off"
    # Maintenance commands keep whatever the server is configured with.
    plain = await asyncpg.connect(backend.database_url.replace("+asyncpg", ""))
    try:
        server_default = await plain.fetchval("SHOW jit")
    finally:
        await plain.close()
    assert await jit(Database(backend.database_url, command_timeout=None)) == server_default
