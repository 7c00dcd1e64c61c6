"""Fixtures of the conversation tests: an app on a clock that moves only when told to."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from dashboard_api.app import create_app
from tests.conftest import Backend


class ManualClock:
    """Time stands still until `advance`, so that tests can make ties on purpose."""

    def __init__(self) -> None:
        self.current = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)

    def now(self) -> datetime:
        return self.current

    def advance(self, ms: int) -> None:
        self.current += timedelta(milliseconds=ms)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def clocked_app(backend: Backend, clock: ManualClock) -> AsyncIterator[FastAPI]:
    app = create_app(backend.settings(), clock=clock)
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30):
        yield app


@pytest.fixture
async def clocked_client(clocked_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=clocked_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c
