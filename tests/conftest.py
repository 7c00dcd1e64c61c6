"""Fixtures: every storage test runs on SQLite (+ in-process broker) and PostgreSQL (+ Redis).

What the fixtures build on (backends, tokens, servers, clocks) is in tests/support/.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from hypothesis import HealthCheck
from hypothesis import settings as hyp_settings

from dashboard_api.app import create_app
from dashboard_api.db.migrate import upgrade_to_head
from dashboard_api.settings import Settings
from tests.support.env import (
    BACKENDS,
    PG_HOST,
    PG_PORT,
    REDIS_URL,
    Backend,
    flush_redis_prefix,
    pg_admin,
    require_services,
    run_sync,
    truncate,
    worker_name,
)
from tests.support.figures import FIGURE_LINES
from tests.support.servers import LiveServer, ServeFactory, serve_app
from tests.support.tokens import Headers, Tokens, make_tokens

# A test about to run over its timeout gets its event loop's tasks dumped (tests/hangwatch.py).
pytest_plugins = ["tests.hangwatch"]

hyp_settings.register_profile(
    "default",
    max_examples=int(os.environ.get("HYPOTHESIS_MAX_EXAMPLES", "25")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
hyp_settings.load_profile("default")

# The hardening figures (tests/support/figures.py) in the terminal summary. Under xdist a
# test runs in a worker whose summary nobody sees: each line rides to the controller on
# the report of the test phase that added it.
_FIGURES_SHOWN: list[str] = []
_FIGURE_KEY = "hardening_figure"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    outcome = yield
    report = outcome.get_result()
    while FIGURE_LINES:
        report.user_properties.append((_FIGURE_KEY, FIGURE_LINES.pop(0)))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _FIGURES_SHOWN.extend(str(v) for k, v in report.user_properties if k == _FIGURE_KEY)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _FIGURES_SHOWN:
        terminalreporter.section("hardening figures")
        for line in _FIGURES_SHOWN:
            terminalreporter.write_line(line)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked `slow` first (in their own order), then the rest: under xdist a
    long test started last would leave the other workers idle at the end of the run."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A migrated PostgreSQL database of this test session's own."""
    require_services()
    name = f"dash_test_{worker_name()}_{os.getpid()}"
    run_sync(pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    run_sync(pg_admin(f'CREATE DATABASE "{name}"'))
    url = f"postgresql+asyncpg://postgres@{PG_HOST}:{PG_PORT}/{name}"
    upgrade_to_head(url)
    yield url
    run_sync(pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file that each test copies."""
    path = tmp_path_factory.mktemp("sqlite") / "template.db"
    upgrade_to_head(f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """SQLite + in-process broker, or PostgreSQL + Redis; clean for each test."""
    prefix = f"dashtest:{uuid.uuid4().hex[:12]}:"
    if request.param == "sqlite":
        template = request.getfixturevalue("sqlite_template")
        path = tmp_path / "dashboard.db"
        shutil.copyfile(template, path)
        yield Backend("sqlite", f"sqlite+aiosqlite:///{path}", None, prefix)
        return
    url = request.getfixturevalue("pg_url")
    await truncate(url)
    yield Backend("postgres", url, REDIS_URL, prefix)
    await flush_redis_prefix(prefix)


@pytest.fixture(params=BACKENDS)
def sync_backend(
    request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path
) -> Iterator[Backend]:
    """Like `backend`, for sync tests: SQLite + memory broker, or PostgreSQL + Redis."""
    prefix = f"dashhard:{os.urandom(6).hex()}:"
    if request.param == "sqlite":
        path = tmp_path / "dashboard.db"
        shutil.copyfile(sqlite_template, path)
        yield Backend("sqlite", f"sqlite+aiosqlite:///{path}", None, prefix)
        return
    require_services()
    url = request.getfixturevalue("pg_url")
    run_sync(truncate(url))
    yield Backend("postgres", url, REDIS_URL, prefix)
    run_sync(flush_redis_prefix(prefix))


@pytest.fixture
def settings(backend: Backend) -> Settings:
    return backend.settings()


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    """A running app (lifespan entered) on the test's backend."""
    application = create_app(settings)
    async with LifespanManager(application, startup_timeout=30, shutdown_timeout=30):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


@pytest.fixture
async def tokens(app: FastAPI) -> Tokens:
    return await make_tokens(app)


@pytest.fixture
def auth(tokens: Tokens) -> Headers:
    """`auth("agent")` gives the Authorization header of that role's token."""
    return tokens.headers


@pytest.fixture
async def serve(backend: Backend) -> AsyncIterator[ServeFactory]:
    """`await serve(**settings_overrides)` starts a live uvicorn server on the test's backend.

    `uvicorn_options={...}` overrides uvicorn's configuration (e.g. its WebSocket protocol).
    """
    stack = contextlib.AsyncExitStack()

    async def start(uvicorn_options: dict[str, Any] | None = None, **overrides: Any) -> LiveServer:
        settings = backend.settings(**overrides)
        app, port = await stack.enter_async_context(serve_app(settings, **(uvicorn_options or {})))
        tokens = await make_tokens(app)
        http = await stack.enter_async_context(
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30)
        )
        return LiveServer(app, port, tokens, http)

    async with stack:
        yield start


@pytest.fixture
async def live(serve: ServeFactory) -> LiveServer:
    return await serve()


@pytest.fixture
def published(app: FastAPI) -> list[tuple[str, dict[str, Any]]]:
    """Every event the app publishes after a commit (forwarded to the real publisher)."""
    seen: list[tuple[str, dict[str, Any]]] = []
    db = app.state.ctx.db
    inner = db.publisher

    async def spy(events: Sequence[tuple[str, dict[str, Any]]]) -> None:
        seen.extend(events)
        if inner is not None:
            await inner(events)

    db.publisher = spy
    return seen
