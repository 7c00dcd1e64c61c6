"""Plain output appends need no hook (`task_hooks.PLAIN_APPENDS_NEED_NO_HOOKS`).

On PostgreSQL such appends are one statement outside a transaction and skip `task_written`
(`services.tasks.append_output_alone`). This test fails when a hook starts to react to
them: whoever adds that hook then sets the flag to False (or narrows what "plain" means).
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import event, func, select

from dashboard_api.db.engine import Database
from dashboard_api.db.models import Task
from dashboard_api.schemas.tasks import TaskCreate
from dashboard_api.services.pricing import PriceTable
from dashboard_api.services.task_hooks import snapshot, task_written
from dashboard_api.services.tasks import register_task
from tests.support.env import Backend
from tests.support.tasks import append, full_log, new_task
from tests.support.tokens import Headers


async def test_a_plain_append_runs_no_hook_statement(
    app: FastAPI, client: httpx.AsyncClient, auth: Headers
) -> None:
    await new_task(client, auth, "plain")
    r = await client.patch("/api/tasks/plain", json={"status": "running"}, headers=auth("agent"))
    assert r.status_code == 200
    assert (await append(client, auth, {"content": "first"}, task_id="plain")).status_code == 200
    db = app.state.ctx.db
    async with db.read() as session:
        task = (await session.scalars(select(Task).where(Task.task_id == "plain"))).one()
        before = snapshot(task)
    assert before.conversation_id is None
    assert before.first_output_at is not None
    after = dataclasses.replace(before, output_seq=before.output_seq + 3)
    statements: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    async with db.write() as session:
        # BEGIN (IMMEDIATE on SQLite) is not the hooks'. Only this session's connection is
        # listened to: the app's background fold runs statements of its own meanwhile.
        conn = (await session.connection()).sync_connection
        assert conn is not None
        event.listen(conn, "before_cursor_execute", note)
        try:
            await task_written(session, before, after)
        finally:
            event.remove(conn, "before_cursor_execute", note)
        # Nothing written, locked, added or published: at most the reads that find the
        # task in no conversation (what the single statement checks in its WHERE).
        assert not session.new
        assert not session.dirty
        assert not session.deleted
        assert not session.info.get("dashboard_pending_events")
    for statement in statements:
        text = " ".join(statement.split()).upper()
        assert text.startswith("SELECT "), statement
        assert " FOR " not in text, statement


async def test_appends_alone_and_in_a_transaction_share_one_numbering(
    client: httpx.AsyncClient, auth: Headers
) -> None:
    """The first append (long way), plain ones (alone on PostgreSQL), one that crosses
    the cap (long way again): one gap-free log, events and answers in step."""
    await new_task(client, auth, "mix")
    r = await client.patch("/api/tasks/mix", json={"status": "running"}, headers=auth("agent"))
    assert r.status_code == 200
    spans = []
    for i in range(6):
        body = {"chunks": [{"content": f"{i}.{k}"} for k in range(i + 1)]}
        r = await append(client, auth, body, task_id="mix")
        assert r.status_code == 200, r.text
        spans.append((r.json()["first_seq"], r.json()["last_seq"]))
    assert spans == [(1, 1), (2, 3), (4, 6), (7, 10), (11, 15), (16, 21)]
    log = await full_log(client, auth, "mix")
    assert [c["seq"] for c in log["chunks"]] == list(range(1, 22))
    assert log["task"]["output_seq"] == 21
    r = await client.patch("/api/tasks/mix", json={"status": "completed"}, headers=auth("agent"))
    assert r.status_code == 200
    r = await append(client, auth, {"content": "late"}, task_id="mix")
    assert r.status_code == 409


async def test_a_session_given_no_task_hooks_refuses_to_write_tasks(backend: Backend) -> None:
    """The hooks come with the sessions of the app's database (create_app hands them
    down): a database set up elsewhere cannot write a task and skip the derived data."""
    db = Database(backend.database_url)
    try:
        with pytest.raises(RuntimeError, match="no task hooks"):
            async with db.write() as session:
                await register_task(
                    session,
                    body=TaskCreate(agent_type="coder", input_message="x", source="api"),
                    now=datetime.now(UTC),
                    prices=PriceTable(*backend.settings().price_table()),
                )
        async with db.read() as session:
            assert (await session.scalar(select(func.count()).select_from(Task))) == 0
    finally:
        await db.dispose()
