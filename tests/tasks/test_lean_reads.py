"""The lean path of the task list and of one task (api/lean.py) answers exactly as
FastAPI's own handling does, for any query string: the same status, headers that matter
and body, errors included. And a list page whose items the database writes (PostgreSQL:
`services.tasks.summaries`) is byte for byte the page Python writes from the rows."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import delete

from dashboard_api.api import lean
from dashboard_api.db.models import Task
from dashboard_api.services.tasks import ORDERINGS, listing
from dashboard_api.services.tasks.summaries import PYTHON_READER
from tests.support.lean_calls import record_lean_answers
from tests.support.summary_values import datasets
from tests.support.tasks import Row, load_rows

Headers = Callable[[str], dict[str, str]]

T0 = datetime(2026, 1, 5, 12, tzinfo=UTC)
ROWS = [
    Row(
        f"t{i:02d}",
        T0 + timedelta(minutes=7 * i),
        status=("completed", "failed", "queued")[i % 3],
        agent_type=("coder", "reviewer")[i % 2],
        source=("api", "slack")[i % 2],
        input_message=f"fix payments bug {i}" if i % 4 else f"other {i}",
        user_id=f"u{i % 3}",
        conversation_id="c1" if i % 5 == 0 else None,
        flow_id="f1" if i % 2 else None,
        cost_micros=i * 1000,
        duration_us=None if i % 3 == 0 else i * 10,
    )
    for i in range(23)
]

# Values FastAPI takes and values it refuses, for each parameter of the list.
VALUES = {
    "status": ["failed", "completed,failed", "failed, queued", "", ",", "paused", "FAILED", " "],
    "agent_type": ["coder", "coder,reviewer", " coder ", "", "a\x00b", "é"],
    "source": ["slack", "api,slack", ","],
    "failure_reason": ["agent", "agent,lease_expired", "nope", ""],
    "created_after": [
        "2026-01-05T13:00:00Z",
        "2026-01-05T13:00:00+02:00",
        "2026-01-05 13:00",
        "2026-01-05",
        "0",
        "",
        "0001-01-01T00:00:00+05:00",
        "2026-01-05T13:00:00.123456789Z",
    ],
    "created_before": ["2026-01-06T00:00:00Z", "2026-13-01T00:00:00Z", "yesterday"],
    "conversation_id": ["c1", "", "x" * 255, "x" * 256, "a\x00"],
    "flow_id": ["f1", "nope"],
    "user_id": ["u1", "u2", ""],
    "q": ["payments", "PAYMENTS", "%", "_", "", "x" * 1001],
    "page": ["1", "2", "0", "-1", "01", "1.0", "+1", " 1", "10000001", "x", ""],
    "per_page": ["1", "5", "200", "201", "0", "050", ""],
    "cursor": ["", "abc", "x" * 4097],
    "sort": ["-created_at", "cost_usd", "-duration_seconds", "cost", ""],
    "other": ["1"],
}
PAIRS = st.sampled_from(sorted(VALUES)).flatmap(
    lambda key: st.tuples(st.just(key), st.sampled_from(VALUES[key]))
)
TASK_IDS = ["t03", "t99", "a b", "x" * 255, "x" * 256, "t03%0A", "%00", "t.0:3@-_"]


def _query(pairs: list[tuple[str, str]]) -> str:
    return "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in pairs)


async def _both(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, url: str, headers: dict[str, str]
) -> tuple[httpx.Response, httpx.Response]:
    lean_answer = await client.get(url, headers=headers)
    with monkeypatch.context() as m:
        m.setattr(lean, "_LEAN", {})
        full_answer = await client.get(url, headers=headers)
    return lean_answer, full_answer


async def _python_written(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, url: str, headers: dict[str, str]
) -> httpx.Response:
    """The answer with the list's items written by Python from the rows."""
    with monkeypatch.context() as m:
        m.setattr(listing, "summary_reader", lambda _session: PYTHON_READER)
        return await client.get(url, headers=headers)


def _same(a: httpx.Response, b: httpx.Response) -> None:
    assert (a.status_code, a.content) == (b.status_code, b.content)
    for name in ("content-type", "www-authenticate", "retry-after"):
        assert a.headers.get(name) == b.headers.get(name)


@given(pairs=st.lists(PAIRS, max_size=4))
async def test_list_answers_as_fastapi_does(
    app: FastAPI,
    client: httpx.AsyncClient,
    auth: Headers,
    monkeypatch: pytest.MonkeyPatch,
    pairs: list[tuple[str, str]],
) -> None:
    await _loaded(app)
    url = "/api/tasks?" + _query(pairs)
    a, b = await _both(client, monkeypatch, url, auth("user"))
    _same(a, b)
    _same(a, await _python_written(client, monkeypatch, url, auth("user")))
    assert a.status_code < 500


@given(rows=datasets(), sort=st.sampled_from(sorted(ORDERINGS)), per_page=st.integers(1, 9))
async def test_list_items_the_database_writes_are_pythons(
    app: FastAPI,
    client: httpx.AsyncClient,
    auth: Headers,
    monkeypatch: pytest.MonkeyPatch,
    rows: list[dict[str, Any]],
    sort: str,
    per_page: int,
) -> None:
    """Every kind of value a summary field takes (tests/support/summary_values.py), in
    every order, on a first page and on the next one by its cursor."""
    async with app.state.ctx.db.write() as session:
        await session.execute(delete(Task))
        for row in rows:
            session.add(Task(**row))
    url = f"/api/tasks?sort={sort}&per_page={per_page}"
    for _ in range(2):
        a = await client.get(url, headers=auth("user"))
        _same(a, await _python_written(client, monkeypatch, url, auth("user")))
        assert a.status_code == 200
        cursor = a.json()["next_cursor"]
        if cursor is None:
            break
        url = f"/api/tasks?sort={sort}&per_page={per_page}&cursor={cursor}"


@pytest.mark.parametrize("task_id", TASK_IDS)
async def test_task_answers_as_fastapi_does(
    app: FastAPI,
    client: httpx.AsyncClient,
    auth: Headers,
    monkeypatch: pytest.MonkeyPatch,
    task_id: str,
) -> None:
    await _loaded(app)
    for headers in (auth("agent"), {}, {"Authorization": "Bearer nope"}):
        a, b = await _both(client, monkeypatch, f"/api/tasks/{task_id}", headers)
        _same(a, b)
    assert (await client.get("/api/tasks/t03", headers=auth("user"))).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}, {"Authorization": "x"}],
)
async def test_list_refuses_callers_as_fastapi_does(
    app: FastAPI,
    client: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
    headers: dict[str, str],
) -> None:
    for url in ("/api/tasks", "/api/tasks?page=0", "/api/tasks?status=failed"):
        a, b = await _both(client, monkeypatch, url, headers)
        _same(a, b)
        assert a.status_code == 401


async def test_lean_path_answers_plain_requests(
    app: FastAPI, client: httpx.AsyncClient, auth: Headers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lean handlers do answer the plain requests (not FastAPI's handler behind them)."""
    await _loaded(app)
    answered = record_lean_answers(monkeypatch)
    query = "status=failed&agent_type=coder&created_after=2026-01-05T13:00:00Z&per_page=5"
    for url in ("/api/tasks", "/api/tasks?" + query, "/api/tasks/t03"):
        assert (await client.get(url, headers=auth("user"))).status_code == 200
    assert answered == ["_list_tasks_lean", "_list_tasks_lean", "_get_task_lean"]


async def _loaded(app: FastAPI) -> None:
    if not getattr(app.state, "lean_rows", False):
        await load_rows(app, ROWS)
        app.state.lean_rows = True
