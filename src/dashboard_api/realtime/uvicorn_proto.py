"""uvicorn's sans-I/O WebSocket protocol behind a session: found, and slimmed for a long life.

The hub writes each event's frame once and hands the same bytes to every subscriber's
transport, which needs uvicorn's protocol object (`WebSocketsSansIOProtocol`) rather than
ASGI `send`. It is found by introspection of private attributes (guarded by
`tests/realtime/test_write_path.py` for the pinned uvicorn and websockets); anything
unexpected leaves the socket on the plain ASGI path.

A server holds thousands of idle sockets, and what uvicorn and websockets keep per socket
for its whole life is most of their memory (bench `ws_scale`). Once the handshake is done,
`direct_protocol` lets go of what only the handshake needed and swaps uvicorn's receive
queue and writable event for slim equivalents with the same behaviour.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import MutableMapping
from typing import Any, Literal

from starlette.websockets import WebSocket
from websockets.protocol import Protocol as _WsProtocol
from websockets.streams import StreamReader


def find_protocol(send: Any, depth: int = 0) -> Any:
    """The uvicorn protocol behind an ASGI `send`, through middleware wrappers: closures,
    or bound methods of objects with `__slots__` (the observability middleware's)."""
    if send is None or depth > 8:
        return None
    owner = getattr(send, "__self__", None)
    if owner is not None and type(owner).__name__ == "WebSocketsSansIOProtocol":
        return owner
    inner: list[Any] = []
    for cell in getattr(send, "__closure__", None) or ():
        with contextlib.suppress(ValueError):  # an empty cell
            inner.append(cell.cell_contents)
    if owner is not None:
        for cls in type(owner).__mro__:
            inner += (getattr(owner, name, None) for name in cls.__dict__.get("__slots__", ()))
    for value in inner:
        if callable(value):
            found = find_protocol(value, depth + 1)
            if found is not None:
                return found
    wrapped = getattr(send, "__wrapped__", None)
    return find_protocol(wrapped, depth + 1) if wrapped is not None else None


def direct_protocol(websocket: WebSocket) -> Any:
    """uvicorn's sans-I/O WebSocket protocol when frames can be written to it directly.

    That is the case when no extension (compression) was negotiated: then an event's frame
    is the same bytes for every subscriber, made once and written to each transport.
    Middleware that wraps `send` only sees the accept and close messages then. Called once
    the handshake is done, it also slims the protocol down (`slim`).
    """
    proto = find_protocol(getattr(websocket, "_send", None))
    if proto is None:
        return None
    conn = getattr(proto, "conn", None)
    transport = getattr(proto, "transport", None)
    writable = getattr(proto, "writable", None)
    if conn is None or transport is None or not isinstance(writable, asyncio.Event):
        return None
    if getattr(conn, "extensions", None):
        return None
    if getattr(proto, "handshake_complete", False):
        slim(proto, websocket.scope)
    return proto


def slim(proto: Any, scope: MutableMapping[str, Any]) -> None:
    """Release what only the handshake needed and use slim queue and event objects.

    Per idle socket (tracemalloc, 300 sockets): the handshake's request and response,
    headers and all, ~2.5 KB, kept by uvicorn (which reads them until the accept is sent)
    and by the websockets parser's suspended frame (its `request` local); the scope's
    header list ~0.7 KB (read during the handshake only: the token, the request id);
    uvicorn's `asyncio.Queue` (four deques of ~760 bytes) and its writable `asyncio.Event`
    (one) ~3.5 KB.
    """
    for name in ("request", "response"):
        if hasattr(proto, name):
            setattr(proto, name, None)
    if isinstance(scope.get("headers"), list):
        scope["headers"] = []
    _restart_parser(proto.conn)
    queue = proto.queue
    if type(queue) is asyncio.Queue and not getattr(queue, "_getters", None):
        proto.queue = Inbox(queue)
    writable = proto.writable
    if type(writable) is asyncio.Event and not writable._waiters:
        proto.writable = SlimEvent(writable.is_set())


def _restart_parser(conn: Any) -> None:
    """Give the websockets parser a fresh frame loop, without the handshake's frame.

    `ServerProtocol.parse` reads the request, then delegates to the frame loop for the
    rest of the connection; its suspended frame keeps the request alive. Only swapped
    when the loop waits between frames with nothing buffered, where a fresh loop is in
    the same state.
    """
    parser = getattr(conn, "parser", None)
    reader = getattr(conn, "reader", None)
    if parser is None or not isinstance(reader, StreamReader) or reader.buffer or reader.eof:
        return
    loop = getattr(parser, "gi_yieldfrom", None)  # Protocol.parse, under ServerProtocol's
    inner = getattr(loop, "gi_yieldfrom", None)
    if (
        getattr(parser, "gi_code", None) is _WsProtocol.parse.__code__
        or getattr(loop, "gi_code", None) is not _WsProtocol.parse.__code__
        or getattr(inner, "gi_code", None) is not StreamReader.at_eof.__code__
    ):
        return
    fresh = _WsProtocol.parse(conn)
    next(fresh)  # runs to the same wait for data (at_eof) as the loop it replaces
    conn.parser = fresh
    parser.close()


class Inbox:
    """uvicorn's receive queue with one consumer (the session): what its protocol uses of
    `asyncio.Queue` (`put_nowait`, `get`, `empty`, `qsize`), without its four deques."""

    __slots__ = ("_items", "_waiter")

    def __init__(self, queue: asyncio.Queue[Any] | None = None) -> None:
        self._items: list[Any] = []
        while queue is not None and not queue.empty():
            self._items.append(queue.get_nowait())
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None  # an idle socket keeps no done future
            if not waiter.done():
                waiter.set_result(None)

    def ready(self) -> asyncio.Future[None] | None:
        """None when an item waits; else a future set when one is put.

        The session waits on it between messages rather than in `WebSocket.receive`: a
        socket idle in `receive` holds a chain of four suspended coroutines (Starlette's,
        the observability middleware's, uvicorn's and `get`), each walked by every full
        garbage collection for as long as the socket lives. After the wake-up `receive`
        finds the item and returns without suspending.
        """
        if self._items:
            return None
        waiter = self._waiter
        if waiter is None or waiter.done():
            waiter = self._waiter = asyncio.get_running_loop().create_future()
        return waiter

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)

    async def get(self) -> Any:
        while not self._items:
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        return self._items.pop(0)


_NO_WAITERS: tuple[()] = ()


class SlimEvent(asyncio.Event):
    """An `asyncio.Event` whose waiter deque (~760 bytes) is made on the first `wait`:
    uvicorn's `writable` event of a socket that never fills its write buffer never has
    a waiter."""

    def __init__(self, value: bool = False) -> None:  # no super().__init__: no deque yet
        # set() iterates the waiters: an empty tuple serves until there is one.
        self._waiters = _NO_WAITERS  # type: ignore[assignment]
        self._value = value

    async def wait(self) -> Literal[True]:
        if self._value:
            return True
        if not isinstance(self._waiters, deque):
            self._waiters = deque()
        return await super().wait()
