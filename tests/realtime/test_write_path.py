"""The two WebSocket write paths of `realtime/ws.py`, on real sockets and both backends.

The fast path writes each event's shared frame straight to the transport of uvicorn's
sans-I/O WebSocket protocol, which it finds by introspection (private attributes). The
fallback sends through ASGI like any app. With the uvicorn range pinned in pyproject the
fast path must be taken: if an upgrade moves those attributes this test fails loudly
instead of the service silently running several times slower. The fallback must stay
correct, because any other server (or uvicorn protocol) gets it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import uvicorn

from dashboard_api.realtime.ws import Connection
from tests.support.servers import LiveServer, ServeFactory
from tests.support.ws import recv_json, recv_until, send_json

FAST = "websockets-sansio"
FALLBACK = "websockets"  # uvicorn's other WebSocket protocol: ASGI sends only


def _only_connection(live: LiveServer) -> Connection:
    conns = [c for c in live.ctx.hub.connections if isinstance(c, Connection)]
    assert len(conns) == 1, conns
    return conns[0]


async def test_fast_path_is_taken_with_the_pinned_uvicorn(live: LiveServer) -> None:
    async with await live.connect("user") as ws:
        await send_json(ws, {"type": "subscribe", "channel": "tasks"})
        assert (await recv_json(ws))["type"] == "subscribed"
        conn = _only_connection(live)
        assert conn._proto is not None, (
            f"uvicorn {uvicorn.__version__}: the fast WebSocket write path is not taken "
            "(realtime/uvicorn_proto.py `direct_protocol` no longer finds uvicorn's protocol). "
            "Fix it for this uvicorn or keep uvicorn within the range pinned in pyproject."
        )


# uvicorn deprecates its legacy protocol; it is used here as "a server without the fast path".
@pytest.mark.filterwarnings("ignore:The `websockets` implementation is deprecated")
@pytest.mark.parametrize("impl", [FAST, FALLBACK])
async def test_both_write_paths_replay_and_stream_exactly(serve: ServeFactory, impl: str) -> None:
    live = await serve(uvicorn_options={"ws": impl})
    await live.create_task("t-path")
    await live.append("t-path", *[f"old {i}" for i in range(30)])
    async with await live.connect("user") as ws:
        await send_json(ws, {"type": "subscribe", "channel": "task:t-path", "since_seq": 10})
        first = await recv_json(ws)
        assert first == {"type": "subscribed", "channel": "task:t-path", "last_seq": 30}
        assert (_only_connection(live)._proto is not None) == (impl == FAST)

        async def produce() -> None:
            for i in range(0, 60, 6):
                await live.append("t-path", *[f"new {i + k}" for k in range(6)])
            await live.finish("t-path")

        producer = asyncio.create_task(produce())
        seen = await recv_until(
            ws, lambda m: m["type"] == "task_status" and m["status"] == "completed", 30
        )
        await producer
    seqs = [m["seq"] for m in seen if m["type"] == "task_output"]
    assert seqs == list(range(11, 91))
    contents: list[Any] = [m["content"] for m in seen if m["type"] == "task_output"]
    assert contents[:20] == [f"old {i}" for i in range(10, 30)]
    assert contents[20:] == [f"new {i}" for i in range(60)]
    assert seen[-1]["type"] == "task_status"


async def test_write_interval_batches_without_losing_or_reordering(serve: ServeFactory) -> None:
    # A long interval makes every burst below share writes; each event still arrives once.
    live = await serve(ws_write_interval_ms=50)
    await live.create_task("t-batch")
    async with await live.connect("user") as ws, await live.connect("user") as other:
        for sock in (ws, other):
            await send_json(sock, {"type": "subscribe", "channel": "task:t-batch"})
            assert (await recv_json(sock))["type"] == "subscribed"
        for i in range(40):
            await live.append("t-batch", f"c{i}")
        await live.finish("t-batch")
        for sock in (ws, other):
            seen = await recv_until(
                sock, lambda m: m["type"] == "task_status" and m["status"] == "completed", 30
            )
            assert [m["content"] for m in seen if m["type"] == "task_output"] == [
                f"c{i}" for i in range(40)
            ]


async def test_an_idle_socket_holds_no_task_or_router_state_of_its_own(live: LiveServer) -> None:
    """What keeps 10,000 idle sockets small (bench `ws_scale`): `/ws` is handed to its
    endpoint by the app's dispatcher, not through Starlette's router and middleware stack,
    and a session's message handler and writer tasks exist only while they have work."""
    async with await live.connect("user") as ws:
        await send_json(ws, {"type": "subscribe", "channel": "tasks"})
        assert (await recv_json(ws))["type"] == "subscribed"
        await send_json(ws, {"type": "ping"})
        assert await recv_json(ws) == {"type": "pong"}
        conn = _only_connection(live)
        scope = conn.websocket.scope
        assert scope["route"].path == "/ws"
        assert "router" not in scope
        assert "endpoint" not in scope
        for _ in range(100):
            busy = [t for t in asyncio.all_tasks() if t.get_name() in ("ws-handler", "ws-writer")]
            if not busy:
                break
            await asyncio.sleep(0.02)
        assert not busy
        # ...and the socket still answers and streams.
        await live.create_task("t-idle")
        seen = await recv_until(ws, lambda m: m.get("task_id") == "t-idle", 10)
        assert seen[-1]["type"] == "task_status"
