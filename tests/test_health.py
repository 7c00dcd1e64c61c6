"""`/api/health` and `/api/health/ready`: open, and 503 naming the dependency that is down."""

from __future__ import annotations

from pathlib import Path

import httpx
from asgi_lifespan import LifespanManager

from dashboard_api.app import create_app
from dashboard_api.settings import Settings


async def test_health_and_ready_need_no_token(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}
    r = await client.get("/api/health/ready")
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "ready"}


async def test_ready_is_503_when_the_database_is_down(tmp_path: Path) -> None:
    # Nothing listens on port 1: the database "is down" from the start.
    settings = Settings(
        _env_file=None,
        database_url="postgresql+asyncpg://postgres@127.0.0.1:1/nothing",
        dependency_timeout_seconds=2,
        token_cache_seconds=0,
    )
    application = create_app(settings)
    async with LifespanManager(application, startup_timeout=30, shutdown_timeout=30):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            assert (await client.get("/api/health")).json() == {"status": "ok"}
            r = await client.get("/api/health/ready")
            assert r.status_code == 503
            assert r.headers["content-type"].startswith("application/problem+json")
            assert r.json()["dependency"] == "database"
            # A request that needs the database is a 503 naming it, not a 500.
            r = await client.get("/api/tasks", headers={"Authorization": "Bearer dash_x"})
            assert r.status_code == 503, r.text
            assert r.json()["dependency"] == "database"
