"""Analytics tests run the app on a clock they move by hand, so durations are known."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from dashboard_api.app import create_app
from dashboard_api.settings import Settings
from tests.support.clock import FakeClock
from tests.support.env import PG_HOST, PG_PORT, pg_admin, require_services, run_sync


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


@pytest.fixture(params=["sqlite", "postgres"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database (no migration run), for migration tests."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'migrate.db'}"
        return
    require_services()
    name = f"dash_test_mig_{uuid.uuid4().hex[:10]}"
    run_sync(pg_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+asyncpg://postgres@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        run_sync(pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def in_thread(fn: Any, *args: Any) -> None:
    """Run a blocking call (Alembic, which runs its own event loop) off the test's loop."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(fn, *args).result()
