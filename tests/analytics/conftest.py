"""Analytics tests run the app on a clock they move by hand, so durations are known."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from dashboard_api.app import create_app
from dashboard_api.settings import Settings
from tests.support.clock import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def app(settings: Settings, clock: FakeClock) -> AsyncIterator[FastAPI]:
    """The app on the test's backend, reading time from `clock`.

    The lease reaper is off: these tests move the clock by hours between writes, which
    would expire every running task's lease while the test compares figures.
    """
    quiet = settings.model_copy(update={"lease_reap_interval_seconds": 0})
    application = create_app(quiet, clock=clock)
    async with LifespanManager(application, startup_timeout=30, shutdown_timeout=30):
        yield application
