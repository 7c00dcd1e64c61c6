"""Producer writes answer and publish the same documents as the Pydantic models.

The answers of register, claim and update and their `task_status` events are written
straight from the row (like the read side); these tests hold them to the models.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
from fastapi import FastAPI

from dashboard_api.db.models import Task
from dashboard_api.schemas.tasks import task_public, task_summary

Headers = Callable[[str], dict[str, str]]


async def _reference(app: FastAPI, task_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    async with app.state.ctx.db.read() as session:
        task = await session.get(Task, task_id)
        assert task is not None
        return task_public(task).model_dump(mode="json"), task_summary(task).model_dump(mode="json")


async def test_write_answers_and_events_match_the_models(
    app: FastAPI, client: httpx.AsyncClient, auth: Headers
) -> None:
    events: list[tuple[str, dict[str, Any]]] = []

    async def publisher(batch: Any) -> None:
        events.extend(batch)

    app.state.ctx.db.publisher = publisher
    agent = auth("agent")
    r = await client.post(
        "/api/tasks",
        json={
            "task_id": "w1",
            "agent_type": "coder",
            "input_message": "é" * 250,
            "model": "claude-sonnet-4",
            "metadata": {"k": [1, 2.5, None], "big": 2**70},
        },
        headers=agent,
    )
    assert r.status_code == 201
    answers = [r.json()]
    r = await client.post(
        "/api/tasks/claim", json={"agent_type": "coder", "agent": "a1"}, headers=agent
    )
    assert r.status_code == 200
    answers.append(r.json())
    r = await client.patch(
        "/api/tasks/w1",
        json={"input_tokens": 1234, "output_tokens": 77, "metadata": {"step": 2}},
        headers=agent,
    )
    answers.append(r.json())
    r = await client.patch(
        "/api/tasks/w1",
        json={"status": "completed", "result": "done", "error": "late warning", "cost_usd": 0.1},
        headers=agent,
    )
    answers.append(r.json())
    public, summary = await _reference(app, "w1")
    assert answers[-1] == public
    assert r.headers["content-type"] == "application/json"
    # Every answer is its own moment of the task: it matches what GET said right then.
    assert [a["status"] for a in answers] == ["queued", "running", "running", "completed"]
    assert answers[0]["metadata"] == {"k": [1, 2.5, None], "big": 2**70}
    statuses = [p for ch, p in events if ch == "tasks"]
    assert len(statuses) == 4
    assert statuses[-1] == {"type": "task_status", **summary}
    assert [p for ch, p in events if ch == "task:w1"] == statuses
    assert statuses[0]["input_preview"] == "é" * 200
    assert statuses[-1]["has_error"] is True
    got = await client.get("/api/tasks/w1", headers=auth("user"))
    assert got.json() == public


async def test_claim_with_nothing_queued_is_204(client: httpx.AsyncClient, auth: Headers) -> None:
    r = await client.post(
        "/api/tasks/claim", json={"agent_type": "none", "agent": "a"}, headers=auth("agent")
    )
    assert r.status_code == 204
    assert r.content == b""
