"""Small HTTP helpers shared by the conversation tests."""

from __future__ import annotations

from typing import Any

import httpx

from tests.support.tokens import Headers


async def new_conversation(
    client: httpx.AsyncClient, auth: Headers, role: str = "user", **body: Any
) -> dict[str, Any]:
    r = await client.post("/api/conversations", json=body, headers=auth(role))
    assert r.status_code == 201, r.text
    return dict(r.json())


async def post(
    client: httpx.AsyncClient, auth: Headers, cid: str, as_: str = "user", **body: Any
) -> httpx.Response:
    """POST a message with the token of `as_`; `body` may carry the message's `role`."""
    return await client.post(f"/api/conversations/{cid}/messages", json=body, headers=auth(as_))


async def get_conv(client: httpx.AsyncClient, auth: Headers, cid: str) -> dict[str, Any]:
    r = await client.get(f"/api/conversations/{cid}", headers=auth("admin"))
    assert r.status_code == 200, r.text
    return dict(r.json())


async def messages(client: httpx.AsyncClient, auth: Headers, cid: str) -> list[dict[str, Any]]:
    r = await client.get(
        f"/api/conversations/{cid}/messages", params={"per_page": 200}, headers=auth("admin")
    )
    assert r.status_code == 200, r.text
    return list(r.json()["items"])


async def patch_task(
    client: httpx.AsyncClient, auth: Headers, task_id: str, **body: Any
) -> httpx.Response:
    return await client.patch(f"/api/tasks/{task_id}", json=body, headers=auth("agent"))


async def register(
    client: httpx.AsyncClient, auth: Headers, task_id: str, **body: Any
) -> dict[str, Any]:
    payload = {"task_id": task_id, "agent_type": "coder", "input_message": "x", **body}
    r = await client.post("/api/tasks", json=payload, headers=auth("agent"))
    assert r.status_code == 201, r.text
    return dict(r.json())
