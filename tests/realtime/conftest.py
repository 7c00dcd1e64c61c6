"""Fixtures of the realtime tests."""

from __future__ import annotations

import pytest

from tests.support.env import require_services, truncate


@pytest.fixture
async def pg(pg_url: str) -> str:
    require_services()
    await truncate(pg_url)
    return pg_url
