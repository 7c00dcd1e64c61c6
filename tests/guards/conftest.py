"""Fixtures of the budgets and alerts tests: an app whose periodic jobs are driven by the
test (it calls the jobs' run-once functions itself), private URLs allowed and quick
retries."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from dashboard_api.app import create_app
from dashboard_api.settings import Settings
from tests.support.env import Backend

QUIET_JOBS: dict[str, Any] = {
    "budgets_evaluate_interval_seconds": 0,
    "alerts_evaluate_interval_seconds": 0,
    "alerts_sender_interval_seconds": 0,
    "agent_sweep_interval_seconds": 0,
}


@pytest.fixture
def settings(backend: Backend) -> Settings:
    return backend.settings(
        alerts_allow_private_urls=True,
        alerts_retry_first_seconds=0.2,
        alerts_retry_max_seconds=1.0,
        **QUIET_JOBS,
    )


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with LifespanManager(application, startup_timeout=30, shutdown_timeout=30):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c
