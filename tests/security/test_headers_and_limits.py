"""Security headers on every response; per-token rate limiting (memory and Redis)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from asgi_lifespan import LifespanManager

from dashboard_api.app import create_app
from tests.support.env import Backend
from tests.support.tokens import make_token


async def test_security_headers_on_api_errors_and_docs(
    client: httpx.AsyncClient, auth: Callable[[str], dict[str, str]]
) -> None:
    for path, headers in (
        ("/api/health", {}),
        ("/api/tasks", {}),  # 401
        ("/api/tasks", auth("user")),
        ("/api/tasks/nope", auth("user")),  # 404
    ):
        r = await client.get(path, headers=headers)
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["cache-control"] == "no-store"
        assert "default-src 'none'" in r.headers["content-security-policy"]
    docs = await client.get("/docs")
    assert docs.status_code == 200
    assert docs.headers["x-content-type-options"] == "nosniff"
    assert "content-security-policy" not in docs.headers


@pytest.fixture
async def limited_client(backend: Backend) -> AsyncIterator[tuple[httpx.AsyncClient, str, str]]:
    app = create_app(backend.settings(rate_limit_per_minute=3))
    async with LifespanManager(app):
        limiter = app.state.ctx.limiter
        assert limiter is not None
        limiter.clock = lambda: 6_000_030.0  # mid-window: the test cannot straddle a minute
        first = await make_token(app, role="user", user_id="alice")
        second = await make_token(app, role="user", user_id="bob")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            yield c, first, second


async def test_rate_limit_per_token(
    limited_client: tuple[httpx.AsyncClient, str, str],
) -> None:
    client, first, second = limited_client
    h1 = {"Authorization": f"Bearer {first}"}
    for _ in range(3):
        assert (await client.get("/api/tasks", headers=h1)).status_code == 200
    r = await client.get("/api/tasks", headers=h1)
    assert r.status_code == 429
    assert r.headers["content-type"].startswith("application/problem+json")
    assert 1 <= int(r.headers["retry-after"]) <= 60
    # Another token has its own budget.
    assert (
        await client.get("/api/tasks", headers={"Authorization": f"Bearer {second}"})
    ).status_code == 200


def test_default_limit_is_off_embedded_and_on_with_redis(backend: Backend) -> None:
    assert backend.settings().effective_rate_limit == (12_000 if backend.redis_url else 0)
