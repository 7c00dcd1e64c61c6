"""The test environment: where PostgreSQL and Redis are, and each test's backend on them.

PostgreSQL: one fresh database per test session (and xdist worker), migrated once and
truncated between tests. SQLite: one migrated template file copied for each test.
Under CI=true a missing PostgreSQL or Redis fails the run instead of skipping.
"""

from __future__ import annotations

import asyncio
import os
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import pytest

from dashboard_api.db.base import Base
from dashboard_api.db.engine import Database
from dashboard_api.settings import Settings

PG_HOST = os.environ.get("DASHBOARD_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("DASHBOARD_TEST_PG_PORT", "5432"))
PG_ADMIN_URL = f"postgresql+asyncpg://postgres@{PG_HOST}:{PG_PORT}/test"
REDIS_URL = os.environ.get("DASHBOARD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI") == "true"
BACKENDS = ("sqlite", "postgres")


def _port_open(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


def _redis_host_port() -> tuple[str, int]:
    parsed = urlparse(REDIS_URL)
    return parsed.hostname or "127.0.0.1", parsed.port or 6379


def require_services() -> None:
    """Skip (locally) or fail (CI) when PostgreSQL or Redis is not reachable."""
    missing = []
    if not _port_open(PG_HOST, PG_PORT):
        missing.append(f"PostgreSQL at {PG_HOST}:{PG_PORT}")
    if not _port_open(*_redis_host_port()):
        missing.append(f"Redis at {REDIS_URL}")
    if missing:
        message = "not reachable: " + ", ".join(missing)
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


def worker_name() -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


def run_sync(coro: Any) -> Any:
    """Run a coroutine to completion from sync code, even inside a running loop."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def pg_admin(sql: str) -> None:
    """Run one statement on the shared server's `test` database (CREATE/DROP DATABASE)."""
    import asyncpg

    conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user="postgres", database="test")
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def truncate(url: str) -> None:
    """Empty every table of the database at `url`."""
    from sqlalchemy import text

    db = Database(url)
    try:
        async with db.engine.begin() as conn:
            tables = [t.name for t in Base.metadata.sorted_tables]
            if tables:
                await conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
    finally:
        await db.dispose()


async def flush_redis_prefix(prefix: str) -> None:
    """Delete the keys under one test's prefix (never the whole shared Redis)."""
    import redis.asyncio as aioredis

    client = aioredis.from_url(REDIS_URL)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@dataclass
class Backend:
    """Where one test's app keeps its data."""

    name: str  # "sqlite" or "postgres"
    database_url: str
    redis_url: str | None
    redis_prefix: str

    def settings(self, **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": self.database_url,
            "redis_url": self.redis_url,
            "redis_prefix": self.redis_prefix,
            # Pub/Sub channels are shared by every test (and every checkout's run) on
            # this Redis: the ingress of a test's app hears only its own producers.
            "redis_ingress_prefix": self.redis_prefix,
            "token_cache_seconds": 0,
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)
