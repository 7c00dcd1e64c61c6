"""The basic producer → reader round trip on both backends."""

from __future__ import annotations

from collections.abc import Callable

import httpx


async def test_register_append_complete_read(
    client: httpx.AsyncClient, auth: Callable[[str], dict[str, str]]
) -> None:
    r = await client.post(
        "/api/tasks",
        json={"task_id": "t-1", "agent_type": "coder", "input_message": "fix it"},
        headers=auth("agent"),
    )
    assert r.status_code == 201, r.text
    r = await client.post(
        "/api/tasks/t-1/output", json={"content": "hello "}, headers=auth("agent")
    )
    assert r.json() == {"first_seq": 1, "last_seq": 1, "truncated": False}
    r = await client.patch("/api/tasks/t-1", json={"status": "running"}, headers=auth("agent"))
    assert r.status_code == 200
    r = await client.patch(
        "/api/tasks/t-1", json={"status": "completed", "result": "done"}, headers=auth("agent")
    )
    assert r.json()["status"] == "completed"
    assert r.json()["duration_seconds"] is not None
    log = (await client.get("/api/tasks/t-1/logs/full", headers=auth("user"))).json()
    assert log["output"] == "hello "
    assert [e["status"] for e in log["events"]] == ["queued", "running", "completed"]
    listing = (await client.get("/api/tasks", headers=auth("user"))).json()
    assert listing["total"] == 1
    assert listing["items"][0]["input_preview"] == "fix it"
