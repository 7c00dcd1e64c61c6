"""Fixtures of the budgets and alerts tests: the settings of an app whose periodic jobs are
driven by the test (it calls the jobs' run-once functions itself), with private URLs allowed
and quick retries. The `app` and `client` fixtures are the suite's own (tests/conftest.py),
built on these settings."""

from __future__ import annotations

from typing import Any

import pytest

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
