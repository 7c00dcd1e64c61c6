"""A registration writes its task, its first status event and its analytics pending row
with `Dialect.insert_with_rows`: one statement on PostgreSQL (data-modifying CTEs), a
statement per row on SQLite. These tests hold the one-statement path to what the
statement-per-row path (`Dialect.insert_with_rows` of the base class) writes, and check
that an existing id writes nothing and that PostgreSQL sends one statement."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, func, select

from dashboard_api.app import create_app
from dashboard_api.db.dialect import Dialect
from dashboard_api.db.models import Task, TaskEvent
from dashboard_api.db.models.analytics import AnalyticsPending
from dashboard_api.settings import Settings
from tests.support.clock import FakeClock
from tests.support.statements import listening
from tests.support.tokens import make_tokens

Headers = Callable[[str], dict[str, str]]

_TASK_COLUMNS = [c for c in Task.__table__.c if c.name != "task_id"]
_EVENT_COLUMNS = [c for c in TaskEvent.__table__.c if c.name not in ("event_id", "task_id")]
_PENDING_COLUMNS = [c for c in AnalyticsPending.__table__.c if c.name != "id"]

# The API refuses NUL characters and lone surrogates (422): text without them.
text_st = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=12)
body_st = st.fixed_dictionaries(
    {
        "agent_type": st.sampled_from(("coder", "triage")),
        "input_message": text_st,
        "source": st.sampled_from(("api", "slack", "github")),
        "status": st.sampled_from(("queued", "running")),
    },
    optional={
        "model": st.sampled_from(("claude-sonnet-4", "gpt-5", "no-such-model")),
        "assigned_agent": st.sampled_from(("agent-1", "agent-2")),
        "user_id": st.sampled_from(("u1", "u2")),
        "flow_id": st.sampled_from(("f1", "f2")),
        "metadata": st.dictionaries(
            text_st, st.one_of(st.integers(-(2**53), 2**53), text_st), max_size=3
        ),
        # Back-filled (hours before the clock) or not given (the clock's now).
        "created_at": st.sampled_from(
            ("2001-01-01T00:00:07Z", "2026-01-01T10:30:00Z", "2026-01-02T23:59:59.5Z")
        ),
        "lease_seconds": st.integers(30, 3600),
        "max_attempts": st.integers(1, 5),
    },
)


@asynccontextmanager
async def _app(settings: Settings, clock: FakeClock, **overrides: Any) -> AsyncIterator[FastAPI]:
    """The app without the background fold (it would move the pending rows compared
    here into the rollups) and the lease reaper."""
    quiet = settings.model_copy(
        update={
            "lease_reap_interval_seconds": 0,
            "analytics_fold_interval_seconds": 0,
            **overrides,
        }
    )
    application = create_app(quiet, clock=clock)
    async with LifespanManager(application, startup_timeout=30, shutdown_timeout=30):
        yield application


@pytest.fixture
async def app(settings: Settings, clock: FakeClock) -> AsyncIterator[FastAPI]:
    async with _app(settings, clock) as application:
        yield application


async def _rows(app: FastAPI, task_id: str) -> tuple[Any, ...]:
    """What the database holds of the task: its row, its events, and the pending rows
    of its agent type (a registration's pending row carries no task id)."""
    async with app.state.ctx.db.read() as session:
        task = (await session.execute(select(*_TASK_COLUMNS).where(Task.task_id == task_id))).all()
        events = (
            await session.execute(
                select(*_EVENT_COLUMNS)
                .where(TaskEvent.task_id == task_id)
                .order_by(TaskEvent.event_id)
            )
        ).all()
        pending = (
            await session.execute(select(*_PENDING_COLUMNS).order_by(AnalyticsPending.id))
        ).all()
    return [tuple(r) for r in task], [tuple(r) for r in events], [tuple(r) for r in pending]


@contextmanager
def _row_by_row(app: FastAPI) -> Iterator[None]:
    """The database's dialect writes a registration with the base class's statement per
    row (what registrations sent before the one-statement path) while inside."""
    dialect = app.state.ctx.db.dialect
    original = dialect.insert_with_rows
    dialect.insert_with_rows = Dialect.insert_with_rows.__get__(dialect)
    try:
        yield
    finally:
        dialect.insert_with_rows = original


async def _clear_pending(app: FastAPI) -> None:
    async with app.state.ctx.db.write() as session:
        await session.execute(delete(AnalyticsPending))


@settings(max_examples=10)  # each example is two registrations and four transactions
@given(body=body_st)
async def test_a_registration_writes_what_the_statement_per_row_path_writes(
    app: FastAPI, client: httpx.AsyncClient, auth: Headers, clock: FakeClock, body: dict[str, Any]
) -> None:
    written = []
    for path in ("one statement", "row by row"):
        task_id = f"reg-{uuid.uuid4().hex[:12]}"
        await _clear_pending(app)
        if path == "row by row":
            with _row_by_row(app):
                r = await client.post(
                    "/api/tasks", json={**body, "task_id": task_id}, headers=auth("agent")
                )
        else:
            r = await client.post(
                "/api/tasks", json={**body, "task_id": task_id}, headers=auth("agent")
            )
        assert r.status_code == 201, r.text
        task, events, pending = await _rows(app, task_id)
        assert (len(task), len(events), len(pending)) == (1, 1, 1)
        # The response tells what the task row holds.
        assert r.json()["task_id"] == task_id
        written.append((task, events, pending))
    assert written[0] == written[1]


async def test_an_existing_id_is_409_and_writes_no_event_and_no_pending_row(
    app: FastAPI, client: httpx.AsyncClient, auth: Headers
) -> None:
    body = {"task_id": "reg-twice", "agent_type": "coder", "input_message": "hi"}
    assert (await client.post("/api/tasks", json=body, headers=auth("agent"))).status_code == 201
    before = await _rows(app, "reg-twice")
    again = await client.post(
        "/api/tasks", json={**body, "status": "running", "model": "gpt-5"}, headers=auth("agent")
    )
    assert again.status_code == 409
    assert again.headers["content-type"].startswith("application/problem+json")
    assert await _rows(app, "reg-twice") == before


async def test_with_the_rollups_off_a_registration_writes_no_pending_row(
    settings: Settings, clock: FakeClock
) -> None:
    async with _app(settings, clock, analytics_rollups_enabled=False) as app:
        headers = (await make_tokens(app)).headers("agent")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            r = await client.post(
                "/api/tasks",
                json={"task_id": "reg-off", "agent_type": "coder", "input_message": "x"},
                headers=headers,
            )
        assert r.status_code == 201
        task, events, pending = await _rows(app, "reg-off")
    assert (len(task), len(events), pending) == (1, 1, [])


async def test_postgresql_registers_a_task_in_one_statement(
    app: FastAPI, client: httpx.AsyncClient, auth: Headers
) -> None:
    db = app.state.ctx.db
    sent: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        sent.append(statement.lstrip().split(None, 1)[0].upper())

    with listening([db.engine], record):
        r = await client.post(
            "/api/tasks",
            json={
                "task_id": "reg-one",
                "agent_type": "coder",
                "input_message": "x",
                # Now (the wall clock's): retention writes its own row for an older task.
                "created_at": datetime.now(UTC).isoformat(),
            },
            headers=auth("agent"),
        )
    assert r.status_code == 201
    writes = [s for s in sent if s in ("INSERT", "WITH", "UPDATE", "DELETE")]
    # PostgreSQL: the task, its event and its pending row in one statement; SQLite (no
    # round trips to save): one statement each.
    assert writes == (["WITH"] if db.backend == "postgresql" else ["INSERT"] * 3)
    async with db.read() as session:
        count = await session.scalar(
            select(func.count()).select_from(TaskEvent).where(TaskEvent.task_id == "reg-one")
        )
    assert count == 1
