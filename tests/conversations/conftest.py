"""Fixtures of the conversation tests: an app on a clock that moves only when told to."""

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


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC))


@pytest.fixture
async def clocked_app(backend: Backend, clock: FakeClock) -> AsyncIterator[FastAPI]:
    # The lease reaper is off: tests move the clock past a running task's lease.
    app = create_app(backend.settings(lease_reap_interval_seconds=0), clock=clock)
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30):
        yield app


@pytest.fixture
async def clocked_client(clocked_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=clocked_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c
