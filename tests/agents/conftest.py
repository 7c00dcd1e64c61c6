"""Fixtures of the agents/status/metrics tests: an app on a controllable clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from dashboard_api.app import create_app
from tests.support.clock import FakeClock
from tests.support.env import Backend
from tests.support.tokens import Tokens, make_tokens


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC))


@pytest.fixture
async def clocked(
    backend: Backend, clock: FakeClock
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient, Tokens]]:
    """An app on the fake clock (sweeper off: tests sweep by hand), a client and tokens."""
    app = create_app(backend.settings(agent_sweep_interval_seconds=0), clock=clock)
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30):
        tokens = await make_tokens(app)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield app, client, tokens
