"""`/ws` protocol (docs/api.md §10) against a real uvicorn, on SQLite and PostgreSQL+Redis."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
from typing import Any

import pytest
import websockets
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from tests.support.servers import LiveServer, ServeFactory
from tests.support.ws import recv_json, recv_until, send_json


async def _closed_code(ws: Any) -> int | None:
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 10)
    return ws.close_code  # type: ignore[no-any-return]


async def test_bad_or_missing_token_closes_4401(live: LiveServer) -> None:
    for url in (live.ws_url(), live.ws_url("dash_nope")):
        ws = await websockets.connect(url)
        assert await _closed_code(ws) == 4401
    ws = await websockets.connect(
        live.ws_url(), additional_headers={"Authorization": "Bearer wrong"}
    )
    assert await _closed_code(ws) == 4401


async def test_header_auth_and_ping(live: LiveServer) -> None:
    async with websockets.connect(
        live.ws_url(), additional_headers={"Authorization": f"Bearer {live.tokens.user}"}
    ) as ws:
        await send_json(ws, {"type": "ping"})
        assert await recv_json(ws) == {"type": "pong"}


async def test_subprotocol_bearer_auth_keeps_the_token_out_of_the_url(live: LiveServer) -> None:
    """What a browser can send: the subprotocols `bearer, <token>`; the answer selects
    `bearer` (the token is never echoed), and a bad token still closes with 4401."""
    await live.create_task("t-sub")
    async with websockets.connect(
        live.ws_url(), subprotocols=[Subprotocol("bearer"), Subprotocol(live.tokens.user)]
    ) as ws:
        assert ws.subprotocol == "bearer"
        await send_json(ws, {"type": "subscribe", "channel": "task:t-sub", "since_seq": 0})
        assert await recv_json(ws) == {"type": "subscribed", "channel": "task:t-sub", "last_seq": 0}
        await live.append("t-sub", "hello")
        event = await recv_json(ws)
        assert (event["type"], event["seq"], event["content"]) == ("task_output", 1, "hello")
    ws = await websockets.connect(
        live.ws_url(), subprotocols=[Subprotocol("bearer"), Subprotocol("dash_wrong")]
    )
    assert await _closed_code(ws) == 4401
    # `bearer` with nothing after it is no token at all.
    ws = await websockets.connect(live.ws_url(), subprotocols=[Subprotocol("bearer")])
    assert await _closed_code(ws) == 4401


async def test_every_error_code_keeps_the_connection(serve: ServeFactory) -> None:
    live = await serve(ws_max_subscriptions=3, ws_max_message_bytes=1024)
    await live.create_task("t-err")
    async with await live.connect("user") as ws:

        async def expect_error(message: str | dict[str, Any], code: str) -> dict[str, Any]:
            if isinstance(message, str):
                await ws.send(message)
            else:
                await send_json(ws, message)
            reply = await recv_json(ws)
            assert reply["type"] == "error", reply
            assert reply["code"] == code, reply
            assert reply["message"]
            return reply

        await expect_error("{not json", "invalid_json")
        await expect_error("[1, 2]", "invalid_json")
        await expect_error({"type": "dance"}, "unknown_type")
        await expect_error({"no": "type"}, "unknown_type")
        r = await expect_error({"type": "subscribe", "channel": "nope"}, "invalid_channel")
        assert r["channel"] == "nope"
        await expect_error({"type": "subscribe", "channel": "task:"}, "invalid_channel")
        await expect_error({"type": "subscribe"}, "invalid_channel")
        await expect_error({"type": "unsubscribe", "channel": "x:y"}, "invalid_channel")
        r = await expect_error({"type": "subscribe", "channel": "task:missing"}, "not_found")
        assert r["channel"] == "task:missing"
        await expect_error({"type": "subscribe", "channel": "conversation:c1"}, "not_found")
        await expect_error("x" * 1025, "message_too_large")
        await expect_error(
            {"type": "subscribe", "channel": "task:t-err", "since_seq": -1}, "invalid_json"
        )
        for name in ("tasks", "webhooks", "sources"):
            await send_json(ws, {"type": "subscribe", "channel": name})
            assert await recv_json(ws) == {"type": "subscribed", "channel": name}
        await expect_error({"type": "subscribe", "channel": "agents"}, "too_many_subscriptions")
        # Re-subscribing to a channel already held is not a new subscription.
        await send_json(ws, {"type": "subscribe", "channel": "tasks"})
        assert await recv_json(ws) == {"type": "subscribed", "channel": "tasks"}
        await send_json(ws, {"type": "unsubscribe", "channel": "webhooks"})
        assert await recv_json(ws) == {"type": "unsubscribed", "channel": "webhooks"}
        await send_json(ws, {"type": "subscribe", "channel": "task:t-err"})
        assert await recv_json(ws) == {"type": "subscribed", "channel": "task:t-err", "last_seq": 0}
        await send_json(ws, {"type": "ping"})
        assert await recv_json(ws) == {"type": "pong"}
    assert live.ctx.hub.subscription_count == 0 or await _eventually_zero(live)


async def _eventually_zero(live: LiveServer) -> bool:
    for _ in range(200):
        if live.ctx.hub.subscription_count == 0 and live.ctx.hub.connection_count == 0:
            return True
        await asyncio.sleep(0.02)
    return False


async def test_agent_may_only_subscribe_to_task_channels(live: LiveServer) -> None:
    await live.create_task("t-agent")
    async with await live.connect("agent") as ws:
        for name in ("tasks", "webhooks", "agents", "sources", "conversation:c"):
            await send_json(ws, {"type": "subscribe", "channel": name})
            reply = await recv_json(ws)
            assert reply["code"] == "forbidden", reply
        await send_json(ws, {"type": "subscribe", "channel": "task:t-agent"})
        assert (await recv_json(ws))["type"] == "subscribed"
        r = await live.http.post("/api/tasks/t-agent/cancel", headers=live.headers("user"))
        assert r.status_code == 200
        events = await recv_until(ws, lambda m: m["type"] == "task_cancel_requested")
        assert events[-1]["channel"] == "task:t-agent"


async def test_conversation_channel_authorizer(live: LiveServer) -> None:
    owners = {"c-alice": "alice"}

    async def lookup(conversation_id: str) -> str | None:
        return owners.get(conversation_id)

    channel_owners = live.ctx.realtime.channels.owners
    previous = channel_owners.get("conversation")
    channel_owners["conversation"] = lookup
    try:
        async with await live.connect("user") as ws:  # alice
            await send_json(ws, {"type": "subscribe", "channel": "conversation:c-alice"})
            assert (await recv_json(ws))["type"] == "subscribed"
        async with await live.connect("other_user") as ws:  # bob
            await send_json(ws, {"type": "subscribe", "channel": "conversation:c-alice"})
            assert (await recv_json(ws))["code"] == "not_found"
        async with await live.connect("admin") as ws:
            await send_json(ws, {"type": "subscribe", "channel": "conversation:c-alice"})
            assert (await recv_json(ws))["type"] == "subscribed"
            await send_json(ws, {"type": "subscribe", "channel": "conversation:c-none"})
            assert (await recv_json(ws))["code"] == "not_found"
    finally:
        if previous is None:
            channel_owners.pop("conversation", None)
        else:
            channel_owners["conversation"] = previous


async def test_replay_then_live_then_final_status(live: LiveServer) -> None:
    await live.create_task("t-r")
    await live.append("t-r", "a", "b", "c")
    async with await live.connect("user") as ws:
        await send_json(ws, {"type": "subscribe", "channel": "task:t-r", "since_seq": 1})
        first = await recv_json(ws)
        assert first == {"type": "subscribed", "channel": "task:t-r", "last_seq": 3}
        got = [await recv_json(ws) for _ in range(2)]
        assert [(m["seq"], m["content"]) for m in got] == [(2, "b"), (3, "c")]
        assert all(m["type"] == "task_output" and m["channel"] == "task:t-r" for m in got)
        assert got[0]["created_at"].endswith("Z")
        await live.append("t-r", "d")
        live_msg = await recv_json(ws)
        assert (live_msg["seq"], live_msg["content"], live_msg["task_id"]) == (4, "d", "t-r")
        await live.finish("t-r")
        status = await recv_json(ws)
        assert status["type"] == "task_status"
        assert status["status"] == "completed"
        assert status["output_seq"] == 4
    # An ended task: the whole replay, then its final status.
    async with await live.connect("user") as ws:
        await send_json(ws, {"type": "subscribe", "channel": "task:t-r", "since_seq": 0})
        msgs = await recv_until(ws, lambda m: m["type"] == "task_status")
        assert msgs[0]["last_seq"] == 4
        assert [m["content"] for m in msgs[1:-1]] == ["a", "b", "c", "d"]
        assert msgs[-1]["status"] == "completed"


async def test_live_only_subscription_and_tasks_channel(live: LiveServer) -> None:
    await live.create_task("t-live")
    await live.append("t-live", "old")
    async with await live.connect("user") as ws:
        await send_json(ws, {"type": "subscribe", "channel": "task:t-live"})
        assert (await recv_json(ws))["last_seq"] == 1
        await send_json(ws, {"type": "subscribe", "channel": "tasks"})
        assert (await recv_json(ws))["type"] == "subscribed"
        await live.append("t-live", "new")
        msg = await recv_json(ws)
        assert (msg["seq"], msg["content"]) == (2, "new")
        await live.create_task("t-other", status="queued")
        msg = await recv_json(ws)
        assert msg["type"] == "task_status"
        assert msg["channel"] == "tasks"
        assert msg["task_id"] == "t-other"
        assert msg["status"] == "queued"


async def test_server_pings_and_drops_a_silent_peer(serve: ServeFactory) -> None:
    live = await serve(ws_ping_interval_seconds=0.2, ws_ping_timeout_seconds=1.0)
    # A well-behaved client answers pings and stays connected.
    async with await live.connect("user") as ws:
        await asyncio.sleep(1.5)
        await send_json(ws, {"type": "ping"})
        assert await recv_json(ws) == {"type": "pong"}
    # A raw peer that never answers is dropped after interval + timeout.
    key = base64.b64encode(os.urandom(16)).decode()
    reader, writer = await asyncio.open_connection("127.0.0.1", live.port)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    writer.write(
        (
            f"GET /ws?token={live.tokens.user} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert b" 101 " in head
    received = b""
    async with asyncio.timeout(5):
        while True:
            data = await reader.read(65536)
            if not data:
                break
            received += data
    assert received[:1] == b"\x89"  # at least one ping frame came first
    writer.close()


async def test_message_over_limit_is_an_error_not_a_close(live: LiveServer) -> None:
    async with await live.connect("user") as ws:
        await ws.send("x" * (64 * 1024 + 1))
        reply = await recv_json(ws)
        assert reply["code"] == "message_too_large"
        await send_json(ws, {"type": "ping"})
        assert await recv_json(ws) == {"type": "pong"}
