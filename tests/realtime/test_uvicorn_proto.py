"""What `realtime/uvicorn_proto.py` does to uvicorn's protocol once a session starts: the
handshake's objects released, slim receive queue and writable event, a fresh frame parser,
and the socket working as before (the memory per idle socket, bench `ws_scale`)."""

from __future__ import annotations

import asyncio

from websockets.protocol import Protocol as WsProtocol

from dashboard_api.realtime.uvicorn_proto import Inbox, SlimEvent
from dashboard_api.realtime.ws import Connection
from tests.support.servers import LiveServer
from tests.support.ws import recv_json, recv_until, send_json


def _only_connection(live: LiveServer) -> Connection:
    conns = [c for c in live.ctx.hub.connections if isinstance(c, Connection)]
    assert len(conns) == 1, conns
    return conns[0]


async def test_a_sessions_protocol_is_slimmed_and_still_serves(live: LiveServer) -> None:
    async with await live.connect("user") as ws:
        await send_json(ws, {"type": "ping"})
        assert await recv_json(ws) == {"type": "pong"}
        proto = _only_connection(live)._proto
        assert proto is not None
        assert isinstance(proto.queue, Inbox)
        assert isinstance(proto.writable, SlimEvent)
        assert proto.writable.is_set()
        assert proto.request is None
        assert proto.response is None
        assert proto.conn.parser.gi_code is WsProtocol.parse.__code__
        assert proto.scope["headers"] == []
        # Messages (in one frame or split over writes) are still read, in order.
        await send_json(ws, {"type": "subscribe", "channel": "tasks"})
        assert (await recv_json(ws))["type"] == "subscribed"
        for i in range(3):
            await send_json(ws, {"type": "ping"})
            assert await recv_json(ws) == {"type": "pong"}, i
        await live.create_task("t-slim")
        seen = await recv_until(ws, lambda m: m.get("task_id") == "t-slim", 10)
        assert seen[-1]["type"] == "task_status"
    # The client's close reaches the session through the slim queue: it ends.
    async with asyncio.timeout(10):
        while live.ctx.hub.connections:
            await asyncio.sleep(0.02)


async def test_inbox_keeps_order_and_loses_nothing_to_a_cancelled_get() -> None:
    inbox = Inbox()
    assert inbox.empty()
    inbox.put_nowait(1)
    inbox.put_nowait(2)
    assert inbox.qsize() == 2
    assert await inbox.get() == 1
    assert await inbox.get() == 2
    waiting = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    inbox.put_nowait(3)
    later = asyncio.create_task(inbox.get())
    inbox.put_nowait(4)
    assert await later == 3
    assert await inbox.get() == 4
    assert inbox.empty()


async def test_inbox_takes_over_what_an_asyncio_queue_held() -> None:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(3):
        queue.put_nowait(i)
    inbox = Inbox(queue)
    assert [await inbox.get() for _ in range(3)] == [0, 1, 2]


async def test_slim_event_behaves_as_an_asyncio_event() -> None:
    event = SlimEvent(True)
    assert await event.wait() is True
    event.clear()
    assert not event.is_set()
    waiters = [asyncio.create_task(event.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)
    event.set()
    assert await asyncio.gather(*waiters) == [True, True, True]
    event.set()  # set twice: no waiter left to wake
    assert event.is_set()
