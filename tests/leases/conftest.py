"""Fixtures of the lease tests: an app on a controllable clock, the reaper run by hand."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from dashboard_api.app import create_app
from tests.support.clock import FakeClock
from tests.support.env import Backend
from tests.support.tokens import Tokens, make_token


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


class Leased:
    """An app on a fake clock whose lease reaper runs only when the test says."""

    def __init__(self, app: FastAPI, client: httpx.AsyncClient, tokens: Tokens) -> None:
        self.app = app
        self.client = client
        self.tokens = tokens

    def auth(self, role: str) -> dict[str, str]:
        return self.tokens.headers(role)

    async def reap(self) -> int:
        from dashboard_api.jobs.reaper import reap_expired_leases

        return await reap_expired_leases(self.app.state.ctx)


@pytest.fixture
async def leased(backend: Backend, clock: FakeClock) -> AsyncIterator[Leased]:
    app = create_app(
        backend.settings(agent_sweep_interval_seconds=0, lease_reap_interval_seconds=0),
        clock=clock,
    )
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30):
        tokens = Tokens(
            admin=await make_token(app, role="admin", user_id="root"),
            user=await make_token(app, role="user", user_id="alice"),
            other_user=await make_token(app, role="user", user_id="bob"),
            agent=await make_token(app, role="agent", user_id="agent-1"),
        )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield Leased(app, client, tokens)


def ts_of(value: Any) -> Any:
    """A wire timestamp as an aware datetime."""
    from datetime import datetime

    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


Auth = Callable[[str], dict[str, str]]
