"""Fixtures: every storage test runs on SQLite (+ in-process broker) and PostgreSQL (+ Redis).

PostgreSQL: one fresh database per test session (and xdist worker), migrated once and
truncated between tests. SQLite: one migrated template file copied for each test.
Under CI=true a missing PostgreSQL or Redis fails the run instead of skipping.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from hypothesis import HealthCheck
from hypothesis import settings as hyp_settings

from dashboard_api.app import create_app
from dashboard_api.db.base import Base
from dashboard_api.db.engine import Database
from dashboard_api.db.migrate import upgrade_to_head
from dashboard_api.services.tokens import create_token
from dashboard_api.settings import Settings
from dashboard_api.timeutil import SystemClock

# A test about to run over its timeout gets its event loop's tasks dumped (tests/hangwatch.py).
pytest_plugins = ["tests.hangwatch"]

hyp_settings.register_profile(
    "default",
    max_examples=int(os.environ.get("HYPOTHESIS_MAX_EXAMPLES", "25")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
hyp_settings.load_profile("default")

PG_HOST = os.environ.get("DASHBOARD_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("DASHBOARD_TEST_PG_PORT", "5432"))
PG_ADMIN_URL = f"postgresql+asyncpg://postgres@{PG_HOST}:{PG_PORT}/test"
REDIS_URL = os.environ.get("DASHBOARD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI") == "true"
BACKENDS = ("sqlite", "postgres")


# Figures the hardening tests measured (examples tried, faults survived), printed in the
# terminal summary of every run so that CI logs carry them (see RELIABILITY.md). Under
# xdist a test runs in a worker whose summary nobody sees: each line rides to the
# controller on the report of the test phase that added it.
FIGURE_LINES: list[str] = []
_FIGURES_SHOWN: list[str] = []
_FIGURE_KEY = "hardening_figure"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    outcome = yield
    report = outcome.get_result()
    while FIGURE_LINES:
        report.user_properties.append((_FIGURE_KEY, FIGURE_LINES.pop(0)))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _FIGURES_SHOWN.extend(v for k, v in report.user_properties if k == _FIGURE_KEY)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _FIGURES_SHOWN:
        terminalreporter.section("hardening figures")
        for line in _FIGURES_SHOWN:
            terminalreporter.write_line(line)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked `slow` first (in their own order), then the rest: under xdist a
    long test started last would leave the other workers idle at the end of the run."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def _port_open(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


def _redis_host_port() -> tuple[str, int]:
    from urllib.parse import urlparse

    parsed = urlparse(REDIS_URL)
    return parsed.hostname or "127.0.0.1", parsed.port or 6379


def require_services() -> None:
    """Skip (locally) or fail (CI) when PostgreSQL or Redis is not reachable."""
    missing = []
    if not _port_open(PG_HOST, PG_PORT):
        missing.append(f"PostgreSQL at {PG_HOST}:{PG_PORT}")
    if not _port_open(*_redis_host_port()):
        missing.append(f"Redis at {REDIS_URL}")
    if missing:
        message = "not reachable: " + ", ".join(missing)
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


def _worker() -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


def run_sync(coro: Any) -> Any:
    """Run a coroutine to completion from sync code, even inside a running loop."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _pg_admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user="postgres", database="test")
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A migrated PostgreSQL database of this test session's own."""
    require_services()
    name = f"dash_test_{_worker()}_{os.getpid()}"
    run_sync(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    run_sync(_pg_admin(f'CREATE DATABASE "{name}"'))
    url = f"postgresql+asyncpg://postgres@{PG_HOST}:{PG_PORT}/{name}"
    upgrade_to_head(url)
    yield url
    run_sync(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file that each test copies."""
    path = tmp_path_factory.mktemp("sqlite") / "template.db"
    upgrade_to_head(f"sqlite+aiosqlite:///{path}")
    return path


_TABLES = ", ".join(f'"{t.name}"' for t in reversed(Base.metadata.sorted_tables))


async def _truncate(url: str) -> None:
    db = Database(url)
    try:
        async with db.engine.begin() as conn:
            from sqlalchemy import text

            tables = [t.name for t in Base.metadata.sorted_tables]
            if tables:
                await conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
    finally:
        await db.dispose()


async def _flush_redis_prefix(prefix: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.from_url(REDIS_URL)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@dataclass
class Backend:
    """Where one test's app keeps its data."""

    name: str  # "sqlite" or "postgres"
    database_url: str
    redis_url: str | None
    redis_prefix: str

    def settings(self, **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": self.database_url,
            "redis_url": self.redis_url,
            "redis_prefix": self.redis_prefix,
            # Pub/Sub channels are shared by every test (and every checkout's run) on
            # this Redis: the ingress of a test's app hears only its own producers.
            "redis_ingress_prefix": self.redis_prefix,
            "token_cache_seconds": 0,
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]


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
    await _truncate(url)
    yield Backend("postgres", url, REDIS_URL, prefix)
    await _flush_redis_prefix(prefix)


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


async def make_token(app: FastAPI, *, role: str, user_id: str) -> str:
    """A real token stored in the app's database."""
    db = app.state.ctx.db
    async with db.write() as session:
        token, _ = await create_token(session, user_id=user_id, role=role, now=SystemClock().now())  # type: ignore[arg-type]
    return token


@dataclass
class Tokens:
    admin: str
    user: str
    other_user: str
    agent: str

    def headers(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {getattr(self, role)}"}


@pytest.fixture
async def tokens(app: FastAPI) -> Tokens:
    return Tokens(
        admin=await make_token(app, role="admin", user_id="root"),
        user=await make_token(app, role="user", user_id="alice"),
        other_user=await make_token(app, role="user", user_id="bob"),
        agent=await make_token(app, role="agent", user_id="agent-1"),
    )


@pytest.fixture
def auth(tokens: Tokens) -> Callable[[str], dict[str, str]]:
    """`auth("agent")` gives the Authorization header of that role's token."""
    return tokens.headers
