"""The web tests' app runs on SQLite: serving the page does not depend on the storage
backend (both backends are covered by the API's own tests)."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest
from pydantic.fields import FieldInfo

from dashboard_api.settings import Settings
from tests.support.env import Backend


@pytest.fixture
async def backend(tmp_path: Path, sqlite_template: Path) -> Backend:
    path = tmp_path / "dashboard.db"
    shutil.copyfile(sqlite_template, path)
    return Backend(
        "sqlite", f"sqlite+aiosqlite:///{path}", None, f"dashtest:{uuid.uuid4().hex[:12]}:"
    )


@pytest.fixture
def settings(backend: Backend) -> Settings:
    # No periodic background work: these apps live for one or two requests, and a job
    # cancelled while aiosqlite opens its connection leaves that connection's thread
    # calling into the closed loop (a warning that fails the next test).
    quiet = {
        name: 0
        for name, spec in Settings.model_fields.items()
        if name.endswith("_interval_seconds") and _zero_turns_off(spec)
    }
    return backend.settings(**quiet)


def _zero_turns_off(spec: FieldInfo) -> bool:
    """Intervals that accept 0 (which turns their job off); the others stay as they are."""
    for bound in spec.metadata:
        gt, ge = getattr(bound, "gt", None), getattr(bound, "ge", None)
        if (gt is not None and gt >= 0) or (ge is not None and ge > 0):
            return False
    return True
