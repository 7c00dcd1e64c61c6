"""`/api/status` and `/api/health/ready`, healthy and with the database or Redis down."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from dashboard_api.app import create_app
from dashboard_api.db.migrate import upgrade_to_head
from dashboard_api.settings import Settings
from tests.support.dependencies import OwnRedis, TcpProxy
from tests.support.env import Backend, pg_admin, require_services
from tests.support.tokens import make_token

STATUS_KEYS = {
    "status", "version", "started_at", "uptime_seconds", "components", "realtime", "tasks",
    "agents",
}  # fmt: skip


async def _until(
    probe: Callable[[], Awaitable[bool]], *, timeout: float = 20.0, step: float = 0.1
) -> None:
    """Poll until `probe()` is true (the condition, not the time, is what is tested)."""
    async with asyncio.timeout(timeout):
        while not await probe():
            await asyncio.sleep(step)


@pytest.fixture
async def running(backend: Backend) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app = create_app(backend.settings())
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield app, client


async def test_status_document(
    backend: Backend, running: tuple[FastAPI, httpx.AsyncClient]
) -> None:
    app, client = running
    user = await make_token(app, role="user", user_id="u")
    agent = await make_token(app, role="agent", user_id="a")
    assert (await client.get("/api/status")).status_code == 401
    r = await client.get("/api/status", headers={"Authorization": f"Bearer {agent}"})
    assert r.status_code == 403
    r = await client.get("/api/status", headers={"Authorization": f"Bearer {user}"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == STATUS_KEYS
    assert body["status"] == "ok"
    db = body["components"]["database"]
    broker = body["components"]["broker"]
    assert db["ok"] is True
    assert broker["ok"] is True
    assert db["backend"] == ("sqlite" if backend.name == "sqlite" else "postgresql")
    assert broker["backend"] == ("memory" if backend.redis_url is None else "redis")
    assert isinstance(db["latency_ms"], float)
    assert body["started_at"].endswith("Z")
    assert body["uptime_seconds"] >= 0
    assert body["realtime"] == {"connections": 0, "subscriptions": 0}
    assert body["tasks"] == {"queued": 0, "running": 0}
    assert body["agents"] == {"online": 0, "total": 0}
    r = await client.get("/api/health/ready")
    assert r.status_code == 200
    assert r.json() == {"status": "ready"}


async def test_status_counts_realtime_subscriptions(
    running: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    from tests.support.ws import ChannelListener

    app, client = running
    user = await make_token(app, role="user", user_id="u")
    async with ChannelListener(app, "agents"), ChannelListener(app, "tasks"):
        r = await client.get("/api/status", headers={"Authorization": f"Bearer {user}"})
        assert r.json()["realtime"]["subscriptions"] == 2


@pytest.fixture
def pg_via_proxy(pg_url: str) -> tuple[str, str, int]:
    """(database name, host, port) of the test PostgreSQL, for a proxy to point at."""
    parsed = urlparse(pg_url.replace("postgresql+asyncpg", "postgresql"))
    return parsed.path.lstrip("/"), parsed.hostname or "127.0.0.1", parsed.port or 5432


async def test_database_down_and_back(pg_via_proxy: tuple[str, str, int]) -> None:
    name, host, port = pg_via_proxy
    proxy = TcpProxy(host, port)
    await proxy.start()
    settings = Settings(
        _env_file=None,
        database_url=f"postgresql+asyncpg://postgres@127.0.0.1:{proxy.port}/{name}",
        redis_url=None,
        token_cache_seconds=300,
        dependency_timeout_seconds=0.5,
        agent_sweep_interval_seconds=0,
        rate_limit_per_minute=0,
    )
    app = create_app(settings)
    try:
        async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                cached = {
                    "Authorization": f"Bearer {await make_token(app, role='user', user_id='u')}"
                }
                fresh = {
                    "Authorization": f"Bearer {await make_token(app, role='user', user_id='v')}"
                }
                assert (await client.get("/api/status", headers=cached)).json()["status"] == "ok"

                for outage in (proxy.refuse, proxy.hang):
                    await outage()
                    r = await client.get("/api/health/ready")
                    assert r.status_code == 503
                    assert r.headers["content-type"].startswith("application/problem+json")
                    assert r.json()["dependency"] == "database"
                    assert "database" in r.json()["detail"]
                    r = await client.get("/api/status", headers=cached)
                    assert r.status_code == 200
                    body = r.json()
                    assert body["status"] == "degraded"
                    assert body["components"]["database"]["ok"] is False
                    assert body["components"]["database"]["error"]
                    assert body["components"]["broker"]["ok"] is True
                    assert body["tasks"] == {"queued": None, "running": None}
                    if outage == proxy.refuse:
                        # Work that needs the database: 503 naming it, never a 500.
                        r = await client.get("/api/tasks", headers=cached)
                        assert r.status_code == 503, r.text
                        assert r.json()["dependency"] == "database"
                        # A token that cannot be checked: the same 503.
                        r = await client.get("/api/status", headers=fresh)
                        assert r.status_code == 503, r.text
                        assert r.json()["dependency"] == "database"
                    await proxy.restore()

                    async def ready() -> bool:
                        return (await client.get("/api/health/ready")).status_code == 200

                    await _until(ready)
                    r = await client.get("/api/status", headers=fresh)
                    assert r.status_code == 200
                    assert r.json()["status"] == "ok"
                    assert (await client.get("/api/tasks", headers=cached)).status_code == 200
    finally:
        await proxy.close()


async def test_redis_down_and_back(tmp_path: Path) -> None:
    require_services()
    redis = OwnRedis()
    redis.start()
    url = f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}"
    upgrade_to_head(url)
    settings = Settings(
        _env_file=None,
        database_url=url,
        redis_url=redis.url,
        dependency_timeout_seconds=0.5,
        agent_sweep_interval_seconds=0,
        rate_limit_per_minute=0,
        token_cache_seconds=0,
    )
    app = create_app(settings)
    try:
        async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                user = {
                    "Authorization": f"Bearer {await make_token(app, role='user', user_id='u')}"
                }

                async def ready_is(code: int) -> Callable[[], Awaitable[bool]]:
                    async def probe() -> bool:
                        return (await client.get("/api/health/ready")).status_code == code

                    return probe

                await _until(await ready_is(200))
                body = (await client.get("/api/status", headers=user)).json()
                assert body["components"]["broker"] == {
                    "ok": True, "backend": "redis",
                    "latency_ms": body["components"]["broker"]["latency_ms"], "error": None,
                }  # fmt: skip
                redis.stop()
                await _until(await ready_is(503))
                r = await client.get("/api/health/ready")
                assert r.json()["dependency"] == "broker"
                r = await client.get("/api/status", headers=user)
                assert r.status_code == 200
                body = r.json()
                assert body["status"] == "degraded"
                assert body["components"]["broker"]["ok"] is False
                assert body["components"]["database"]["ok"] is True
                assert body["tasks"] == {"queued": 0, "running": 0}
                # Writes still succeed: the database is the source of truth.
                agent = {
                    "Authorization": f"Bearer {await make_token(app, role='agent', user_id='a')}"
                }
                r = await client.post("/api/agents/x/heartbeat", headers=agent)
                assert r.status_code == 204
                redis.start()
                await _until(await ready_is(200))
                r = await client.get("/api/status", headers=user)
                assert r.json()["status"] == "ok"
    finally:
        redis.stop()


async def test_a_server_out_of_connections_gives_503_and_recovers(pg_url: str) -> None:
    """PostgreSQL refusing new connections ("too many connections", SQLSTATE 53300) is a
    dependency outage: 503 naming the database, then 200 once it takes connections again.
    A role of the test's own with a connection limit of 0 makes the refusal real."""
    suffix = uuid.uuid4().hex[:8]
    role, name = f"dash_limited_{suffix}", f"dash_limited_{suffix}"
    await pg_admin(f'CREATE ROLE "{role}" LOGIN')
    await pg_admin(f'CREATE DATABASE "{name}" OWNER "{role}"')
    parsed = urlparse(pg_url.replace("postgresql+asyncpg", "postgresql"))
    url = f"postgresql+asyncpg://{role}@{parsed.hostname}:{parsed.port or 5432}/{name}"
    await asyncio.to_thread(upgrade_to_head, url)
    settings = Settings(
        _env_file=None,
        database_url=url,
        redis_url=None,
        token_cache_seconds=0,
        dependency_timeout_seconds=0.5,
        agent_sweep_interval_seconds=0,
        lease_reap_interval_seconds=0,
        rate_limit_per_minute=0,
    )
    app = create_app(settings)
    try:
        async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                token = await make_token(app, role="user", user_id="u")
                auth = {"Authorization": f"Bearer {token}"}
                assert (await client.get("/api/tasks", headers=auth)).status_code == 200

                await pg_admin(f'ALTER ROLE "{role}" CONNECTION LIMIT 0')
                await app.state.ctx.db.engine.dispose()  # every later request connects anew
                for path in ("/api/tasks", "/api/me"):
                    r = await client.get(path, headers=auth)
                    assert r.status_code == 503, r.text
                    assert r.headers["content-type"].startswith("application/problem+json")
                    assert r.json()["dependency"] == "database"
                    assert r.headers["retry-after"] == "1"

                await pg_admin(f'ALTER ROLE "{role}" CONNECTION LIMIT -1')
                assert (await client.get("/api/tasks", headers=auth)).status_code == 200
    finally:
        await pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await pg_admin(f'DROP ROLE IF EXISTS "{role}"')
