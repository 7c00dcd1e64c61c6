"""`conversation:{id}` over a real `/ws`: owner and admin hear messages and task status."""

from __future__ import annotations

from typing import Any

from tests.support.servers import LiveServer
from tests.support.ws import recv_json, recv_until, send_json


async def _subscribe(ws: Any, name: str) -> dict[str, Any]:
    await send_json(ws, {"type": "subscribe", "channel": name})
    return await recv_json(ws)


async def test_subscriber_hears_messages_and_task_status(live: LiveServer) -> None:
    from dashboard_api.api.conversations import lookup_conversation_owner

    # create_app hands the conversations feature's owner lookup to the realtime layer.
    lookup = live.ctx.realtime.channels.owners["conversation"]
    assert lookup.func is lookup_conversation_owner
    r = await live.http.post("/api/conversations", json={}, headers=live.headers("user"))
    cid = r.json()["conversation_id"]
    name = f"conversation:{cid}"

    async with await live.connect("other_user") as ws:  # bob: as if it did not exist
        reply = await _subscribe(ws, name)
        assert (reply["type"], reply["code"]) == ("error", "not_found")
    async with await live.connect("agent") as ws:
        assert (await _subscribe(ws, name))["type"] == "error"

    async with await live.connect("user") as ws, await live.connect("admin") as admin_ws:
        assert await _subscribe(ws, name) == {"type": "subscribed", "channel": name}
        assert (await _subscribe(admin_ws, name))["type"] == "subscribed"
        r = await live.http.post(
            f"/api/conversations/{cid}/messages",
            json={"content": "hi"},
            headers=live.headers("user"),
        )
        assert r.status_code == 201
        sent = r.json()
        for sock in (ws, admin_ws):
            created = await recv_until(sock, lambda m: m["type"] == "message_created")
            assert created[-1]["channel"] == name
            assert created[-1]["message"] == sent
        task_id = sent["task_id"]
        r = await live.http.patch(
            f"/api/tasks/{task_id}", json={"status": "running"}, headers=live.headers("agent")
        )
        r = await live.http.patch(
            f"/api/tasks/{task_id}",
            json={"status": "completed", "result": "done"},
            headers=live.headers("agent"),
        )
        assert r.status_code == 200
        seen = await recv_until(
            ws, lambda m: m["type"] == "message_created" and m["message"]["role"] == "assistant"
        )
        statuses = [m["status"] for m in seen if m["type"] == "task_status"]
        assert statuses[-2:] == ["running", "completed"]  # the end comes before the reply
        assert all(m["task_id"] == task_id for m in seen if m["type"] == "task_status")
        assert seen[-1]["message"]["content"] == "done"
