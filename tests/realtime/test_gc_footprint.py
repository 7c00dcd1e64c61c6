"""What an open WebSocket session leaves for the garbage collector to walk.

A full (generation 2) collection walks every tracked container object with the event
loop stopped, so the objects a socket holds for its lifetime set the length of that
pause at 10,000 sockets (bench `ws_scale`, src/dashboard_api/gc_tuning.py). The sockets
here are opened by clients in other processes, so that every object counted is the
server's: real sessions through uvicorn, each subscribed to a task channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sys
import weakref
from collections.abc import AsyncIterator

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from dashboard_api.realtime.subscriptions import TaskSubscription
from dashboard_api.realtime.ws import Connection
from tests.support.servers import LiveServer

SOCKETS = 60
# Tracked objects one idle, subscribed session holds, counted after a full collection
# (asyncio's own loop here, whose transport holds more than the bench's uvloop): uvicorn's
# and websockets' protocol objects, the transport and its keepalive timer, the ASGI call's
# suspended coroutines (uvicorn, middleware, endpoint, session), this service's
# connection and subscription: 67-75 on SQLite, 75-82 on PostgreSQL (from run to run,
# on a loaded machine). It was 86-87 and 94-95 before the session waited on a bare
# future between messages (not in four suspended `receive` coroutines), the observability
# middleware used a slotted object instead of closures, and finished message-handler and
# sync tasks were let go.
MAX_TRACKED_PER_SOCKET = 88

_CLIENT = r"""
import asyncio, sys
import websockets

async def main(url, n, channel):
    sockets = [await websockets.connect(url) for _ in range(n)]
    for ws in sockets:
        await ws.send('{"type": "subscribe", "channel": "%s"}' % channel)
        await ws.recv()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for ws in sockets:
        await ws.close()

asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
"""


def _tracked() -> int:
    """Tracked objects after a full collection, but for dead weak references: sqlite3
    keeps one per cursor it made in a list it prunes every 200 cursors."""
    gc.collect()
    return sum(1 for o in gc.get_objects() if not (isinstance(o, weakref.ref) and o() is None))


@contextlib.asynccontextmanager
async def _sockets(live: LiveServer, n: int, channel: str) -> AsyncIterator[None]:
    """`n` subscribed sockets, opened and held by a client process."""
    client = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _CLIENT,
        live.ws_url(live.tokens.user),
        str(n),
        channel,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert client.stdin is not None
    assert client.stdout is not None
    try:
        async with asyncio.timeout(60):
            assert (await client.stdout.readline()).strip() == b"ready"
        yield
    finally:
        client.stdin.write(b"\n")
        await client.stdin.drain()
        async with asyncio.timeout(60):
            await client.wait()


async def _until_sessions(live: LiveServer, n: int) -> None:
    """Until `n` sessions are open and idle: each subscription caught up (its sync task
    ended and let go)."""
    async with asyncio.timeout(20):
        while True:
            conns = [c for c in live.ctx.hub.connections if isinstance(c, Connection)]
            subs = [s for c in conns for s in c.subscriptions.values()]
            if len(conns) == n and all(
                isinstance(s, TaskSubscription) and s._sync_task is None for s in subs
            ):
                return
            await asyncio.sleep(0.02)


async def test_an_idle_subscribed_session_holds_few_tracked_objects(live: LiveServer) -> None:
    await live.create_task("t-gc")
    # A first batch builds what is made once (caches, the channel's group, compiled
    # statements); the second batch's difference is the sockets' own.
    async with _sockets(live, SOCKETS, "task:t-gc"):
        await _until_sessions(live, SOCKETS)
        before = _tracked()
        async with _sockets(live, SOCKETS, "task:t-gc"):
            await _until_sessions(live, 2 * SOCKETS)
            per_socket = (_tracked() - before) / SOCKETS
            assert per_socket <= MAX_TRACKED_PER_SOCKET, per_socket
        await _until_sessions(live, SOCKETS)
        # The closed sessions are gone: their connections, subscriptions and uvicorn's
        # protocols (whatever cycles they left are collected).
        gc.collect()
        kinds = (Connection, TaskSubscription, WebSocketsSansIOProtocol)
        left = sum(1 for o in gc.get_objects() if isinstance(o, kinds))
        assert left == len(kinds) * SOCKETS, left  # the first batch's, still open
        # The sockets still open are served.
        await live.append("t-gc", "hello")
