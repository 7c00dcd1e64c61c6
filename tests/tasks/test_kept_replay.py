"""Kept list statements replayed on the driver (db/replay.py) answer exactly as the same
statements executed through SQLAlchemy: any query string, pages that follow writes, a
driver error; and a statement listener still sees every statement."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import event

from dashboard_api.db import replay
from tests.support.tasks import load_rows
from tests.tasks.test_lean_reads import PAIRS, ROWS, T0, _query, _same

Headers = Callable[[str], dict[str, str]]


def _replays(app: FastAPI) -> bool:
    return bool(app.state.ctx.db.dialect.replays_on_driver)


def _count_replays(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The statements the driver was sent straight (not through SQLAlchemy)."""
    sent: list[str] = []
    fetch = replay._fetch

    async def counted(driver: Any, kept: Any) -> Any:
        sent.append(kept.sql)
        return await fetch(driver, kept)

    monkeypatch.setattr(replay, "_fetch", counted)
    return sent


async def _through_sqlalchemy(
    app: FastAPI, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, url: str, h: Any
) -> httpx.Response:
    with monkeypatch.context() as m:
        m.setattr(type(app.state.ctx.db.dialect), "replays_on_driver", False)
        return await client.get(url, headers=h)


async def _loaded(app: FastAPI) -> None:
    if not getattr(app.state, "replay_rows", False):
        await load_rows(app, ROWS)
        app.state.replay_rows = True


@given(pairs=st.lists(PAIRS, max_size=4))
async def test_replayed_pages_are_sqlalchemys(
    app: FastAPI,
    client: httpx.AsyncClient,
    auth: Headers,
    monkeypatch: pytest.MonkeyPatch,
    pairs: list[tuple[str, str]],
) -> None:
    await _loaded(app)
    url = "/api/tasks?" + _query(pairs)
    h = auth("user")
    first = await client.get(url, headers=h)  # kept (and noted) here if it is kept at all
    replayed = await client.get(url, headers=h)
    _same(first, replayed)
    _same(replayed, await _through_sqlalchemy(app, client, monkeypatch, url, h))


async def test_plain_pages_are_replayed_and_follow_writes(
    app: FastAPI, client: httpx.AsyncClient, auth: Headers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first page and single filters are replayed from their third request on (on
    PostgreSQL; SQLite never replays), and a replayed page shows what was written since
    it was kept: rows, total and cursor."""
    await _loaded(app)
    sent = _count_replays(monkeypatch)
    h = auth("user")
    urls = [f"/api/tasks?{q}" for q in ("", "agent_type=coder", "user_id=u1")]
    urls.append("/api/tasks?per_page=2&source=slack")
    before = {}
    for url in urls:
        # Built and kept, executed through SQLAlchemy (which shows what it sent), replayed.
        for _ in range(2):
            await client.get(url, headers=h)
        replays = len(sent)
        before[url] = (await client.get(url, headers=h)).json()
        assert len(sent) == replays + _replays(app)
    replays = len(sent)
    for i in range(3):
        body = {
            "task_id": f"n{i}",
            "agent_type": "coder",
            "source": "slack",
            "user_id": "u1",
            "input_message": f"new {i}",
            "created_at": (T0 + timedelta(days=1, minutes=i)).isoformat(),
        }
        r = await client.post("/api/tasks", json=body, headers=auth("agent"))
        assert r.status_code == 201, r.text
    for url in urls:
        after = await client.get(url, headers=h)
        assert after.json()["total"] == before[url]["total"] + 3
        assert after.json()["items"][0]["task_id"] == "n2"
        _same(after, await _through_sqlalchemy(app, client, monkeypatch, url, h))
    assert len(sent) == replays + (len(urls) if _replays(app) else 0)  # each replayed again


async def test_a_statement_listener_sees_every_statement(
    app: FastAPI, client: httpx.AsyncClient, auth: Headers, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _loaded(app)
    sent = _count_replays(monkeypatch)
    seen: list[str] = []

    def note(_c: Any, _cur: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    engine = app.state.ctx.db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", note)
    try:
        for _ in range(3):
            assert (await client.get("/api/tasks", headers=auth("user"))).status_code == 200
    finally:
        event.remove(engine, "before_cursor_execute", note)
    assert sent == []
    pages = [s for s in seen if "ORDER BY tasks.created_at DESC, tasks.task_id DESC" in s]
    assert len(pages) == 3  # the page statement, each time
    for _ in range(3):
        await client.get("/api/tasks", headers=auth("user"))
    assert len(sent) >= (1 if _replays(app) else 0)


async def test_a_driver_error_gets_sqlalchemys_answer(
    app: FastAPI, client: httpx.AsyncClient, auth: Headers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever the driver raises, the statement goes through SQLAlchemy again, whose
    answer (here the page, since the database is fine) is the request's."""
    await _loaded(app)
    h = auth("user")
    url = "/api/tasks?status=completed"
    for _ in range(2):
        await client.get(url, headers=h)
    expected = await client.get(url, headers=h)
    failed: list[int] = []

    async def broken(_driver: Any, _kept: Any) -> Any:
        failed.append(1)
        raise OSError("connection reset")

    monkeypatch.setattr(replay, "_fetch", broken)
    _same(await client.get(url, headers=h), expected)
    assert len(failed) == (1 if _replays(app) else 0)
