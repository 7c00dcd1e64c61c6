"""The WebSocket session of docs/api.md §10 (subscribe/unsubscribe/ping, errors, slow consumers).

The route (`api/ws.py`) authenticates the handshake and hands the socket to `run_session`;
everything after that, down to the frames written to uvicorn's protocol, is here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import orjson
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from dashboard_api.aiotasks import await_chain, stop_tasks
from dashboard_api.auth import Principal
from dashboard_api.realtime.channels import Channel, ChannelAuthorizer, parse_channel
from dashboard_api.realtime.events import OutEvent
from dashboard_api.realtime.hub import Hub
from dashboard_api.realtime.sinks import QueueSink
from dashboard_api.realtime.subscriptions import Subscription, TaskSubscription
from dashboard_api.realtime.uvicorn_proto import Inbox, direct_protocol
from dashboard_api.settings import Settings

log = logging.getLogger(__name__)

CLOSE_INTERNAL_ERROR = 1011
CLOSE_TRY_AGAIN_LATER = 1013
# Over `ws_max_connections_per_token` sockets for one token on this replica (HTTP 429's twin).
CLOSE_TOO_MANY_CONNECTIONS = 4429


class Connection(QueueSink):
    """One client socket: its subscriptions, a bounded send queue and its writer task.

    On the direct path (uvicorn's protocol found) the writer task exists only while
    events wait in the queue: an idle socket holds no task of its own.
    """

    __slots__ = (
        "_closer",
        "_pending",
        "_proto",
        "_writable",
        "_writer",
        "close_code",
        "hub",
        "last_write",
        "principal",
        "subscriptions",
        "websocket",
    )

    pace = 0.0  # written at most once per the hub's write interval (see `Group.pace`)

    def __init__(self, websocket: WebSocket, principal: Principal, hub: Hub, size: int) -> None:
        super().__init__(size)
        self.websocket = websocket
        self.principal = principal
        self.hub = hub
        self.subscriptions: dict[str, Subscription] = {}
        self.close_code: int | None = None
        self._proto = direct_protocol(websocket)
        self._writable: asyncio.Event | None = self._proto.writable if self._proto else None
        self._pending: list[bytes] = []
        self.last_write = float("-inf")  # loop time of the last hub flush (write interval)
        self._writer: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None

    # --- sending ------------------------------------------------------------------------

    def _can_write_now(self) -> bool:
        proto = self._proto
        return (
            proto is not None
            and not self.queue
            and proto.writable.is_set()
            and not proto.close_sent
            and not proto.transport.is_closing()
        )

    def offer(self, event: OutEvent) -> bool:
        if self.closed:
            return False
        if self._writable is not None and self._writable.is_set() and not self.queue:
            # The queue is empty and the socket takes data: the shared frame goes out at
            # the end of this loop iteration, with any others for this socket (one write).
            pending = self._pending
            if not pending:
                self.hub.mark_dirty(self)
            pending.append(event.frame)
            return True
        if not super().offer(event):
            return False
        self._start_writer()
        return True

    async def put(self, event: OutEvent) -> None:
        if self._can_write_now():
            # Replays write at once, so that the transport's flow control applies.
            self.flush()
            self._proto.transport.write(event.frame)
            return
        await super().put(event)
        self._start_writer()

    def _start_writer(self) -> None:
        """Have the writer task send what is queued (direct path: started on demand)."""
        writer = self._writer
        if self._proto is not None and (writer is None or writer.done()) and not self.closed:
            self._writer = asyncio.create_task(self.run_writer(), name="ws-writer")

    def can_share(self) -> bool:
        writable = self._writable
        return (
            writable is not None
            and writable.is_set()
            and not self.queue
            and not self.closed
            and not self._proto.close_sent
            and not self._proto.transport.is_closing()
        )

    def write_shared(self, data: bytes) -> bool:
        # The checks of can_share, inlined: this runs once per member and shared write.
        writable = self._writable
        if writable is None or not writable.is_set() or self.queue or self.closed:
            return False
        proto = self._proto
        transport = proto.transport
        if proto.close_sent or transport.is_closing():
            return False
        pending = self._pending
        if pending:
            # Frames of its own gathered before: they go first, in the same write.
            pending.append(data)
            self.flush()
            return True
        transport.write(data)
        return True

    def flush(self) -> None:
        """Write the frames gathered in this loop iteration."""
        pending = self._pending
        if not pending:
            return
        self._pending = []
        proto = self._proto
        if self.closed or proto is None or proto.close_sent or proto.transport.is_closing():
            return
        proto.transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def on_overflow(self) -> None:
        if self.closed:
            return
        log.info("closing a WebSocket whose send queue is full (%d events)", self.size)
        self.close_code = CLOSE_TRY_AGAIN_LATER
        self.close()
        self._closer = asyncio.create_task(self._close_slow())

    async def _close_slow(self) -> None:
        writer = self._writer
        if writer is not None and writer is not asyncio.current_task():
            writer.cancel()
        await self._detach_all()
        proto = self._proto
        if proto is not None:
            # Do not wait for the socket to drain: queue the close frame after what is
            # buffered and abort if the peer does not read it soon.
            with contextlib.suppress(Exception):
                if not proto.close_sent and not proto.transport.is_closing():
                    proto.conn.send_close(CLOSE_TRY_AGAIN_LATER, "send queue overflow")
                    proto.transport.write(b"".join(proto.conn.data_to_send()))
                    proto.close_sent = True
                    proto.queue.put_nowait(
                        {"type": "websocket.disconnect", "code": CLOSE_TRY_AGAIN_LATER}
                    )
                    asyncio.get_running_loop().call_later(5.0, proto.transport.abort)
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await self.websocket.close(CLOSE_TRY_AGAIN_LATER, "send queue overflow")

    async def run_writer(self) -> None:
        """Send queued events in order: on the direct path until the queue is empty (it
        is started again when an event is queued), else until the connection closes."""
        proto = self._proto
        try:
            while True:
                if proto is not None:
                    if not self.queue or self.closed:
                        return
                    await proto.writable.wait()
                    if self.closed or proto.close_sent or proto.transport.is_closing():
                        return
                    self.flush()
                    frames = [e.frame for e in self.queue]
                    self.queue.clear()
                    self._note_room()
                    proto.transport.write(b"".join(frames))
                else:
                    event = await self.get()
                    if event is None:
                        return
                    await self.websocket.send_text(event.text)
        except (WebSocketDisconnect, RuntimeError, OSError):
            self.close()

    def reply(self, payload: dict[str, Any]) -> None:
        """A protocol answer (subscribed, pong, error...)."""
        self.offer(OutEvent(payload))

    def error(self, code: str, message: str, channel: str | None = None) -> None:
        payload: dict[str, Any] = {"type": "error", "code": code, "message": message}
        if channel is not None:
            payload["channel"] = channel
        self.reply(payload)

    async def _detach_all(self) -> None:
        subs = list(self.subscriptions.values())
        self.subscriptions.clear()
        for sub in subs:
            with contextlib.suppress(Exception):
                await sub.close()

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        if self._proto is None:  # the ASGI path: one writer for the socket's lifetime
            self._writer = asyncio.create_task(self.run_writer(), name="ws-writer")

    async def shutdown(self) -> None:
        self.close()
        await self._detach_all()
        await stop_tasks((self._writer,), what="WebSocket connection")
        closer = self._closer
        if closer is not None:
            # Not cancelled: it sends a slow consumer its 1013 close (bounded by its own
            # timeouts). asyncio.wait, unlike a suppressed `await`, lets our own
            # cancellation through.
            await asyncio.wait({closer})
            if not closer.cancelled():
                closer.exception()  # retrieved: _close_slow suppresses its own errors


class Protocol:
    """Handles the client messages of one connection: in order, by a task of its own
    (`handler`) that runs while messages wait in `inbox` and ends when they are handled."""

    __slots__ = ("channels", "conn", "handler", "hub", "inbox", "settings")

    def __init__(
        self, settings: Settings, hub: Hub, channels: ChannelAuthorizer, conn: Connection
    ) -> None:
        self.conn = conn
        self.settings = settings
        self.hub = hub
        self.channels = channels
        self.handler: asyncio.Task[None] | None = None
        self.inbox: list[str | bytes] | None = None

    async def handle(self, raw: str | bytes) -> None:
        conn = self.conn
        size = len(raw) if isinstance(raw, bytes) else len(raw.encode())
        if size > self.settings.ws_max_message_bytes:
            conn.error(
                "message_too_large",
                f"Messages are limited to {self.settings.ws_max_message_bytes} bytes.",
            )
            return
        try:
            message = orjson.loads(raw)
        except orjson.JSONDecodeError:
            conn.error("invalid_json", "The message is not valid JSON.")
            return
        if not isinstance(message, dict):
            conn.error("invalid_json", "A message is a JSON object with a `type`.")
            return
        kind = message.get("type")
        if kind == "ping":
            conn.reply({"type": "pong"})
        elif kind == "subscribe":
            await self.subscribe(message)
        elif kind == "unsubscribe":
            await self.unsubscribe(message)
        else:
            conn.error("unknown_type", f"Unknown message type {kind!r}.")

    async def subscribe(self, message: dict[str, Any]) -> None:
        conn = self.conn
        name = message.get("channel")
        channel = parse_channel(name)
        if channel is None:
            conn.error("invalid_channel", f"Unknown channel {name!r}.", _str(name))
            return
        since = message.get("since_seq")
        if since is not None and (
            isinstance(since, bool) or not isinstance(since, int) or since < 0
        ):
            conn.error("invalid_json", "`since_seq` must be a non-negative integer.", channel.name)
            return
        verdict = await self.channels.authorize(conn.principal, channel)
        if verdict != "ok":
            text = (
                "This channel is not open to your role."
                if verdict == "forbidden"
                else f"No such {channel.kind}."
            )
            conn.error(verdict, text, channel.name)
            return
        previous = conn.subscriptions.pop(channel.name, None)
        if previous is None and len(conn.subscriptions) >= self.settings.ws_max_subscriptions:
            conn.error(
                "too_many_subscriptions",
                f"At most {self.settings.ws_max_subscriptions} subscriptions per connection.",
                channel.name,
            )
            return
        if previous is not None:
            await previous.close()
        await self._open(channel, since)

    async def _open(self, channel: Channel, since: int | None) -> None:
        conn = self.conn
        if channel.kind == "task":
            assert channel.resource_id is not None
            sub = TaskSubscription(self.hub, conn, channel.name, channel.resource_id, since)
            conn.subscriptions[channel.name] = sub
            state = await sub.open()
            if state is None:
                conn.subscriptions.pop(channel.name, None)
                conn.error("not_found", f"No task {channel.resource_id!r}.", channel.name)
                return
            if conn.subscriptions.get(channel.name) is not sub:
                return  # replaced or closed meanwhile
            conn.reply(
                {"type": "subscribed", "channel": channel.name, "last_seq": state.output_seq}
            )
            sub.start()
            return
        plain = Subscription(self.hub, conn, channel.name)
        conn.subscriptions[channel.name] = plain
        await self.hub.attach(plain)
        conn.reply({"type": "subscribed", "channel": channel.name})

    async def unsubscribe(self, message: dict[str, Any]) -> None:
        conn = self.conn
        name = message.get("channel")
        channel = parse_channel(name)
        if channel is None:
            conn.error("invalid_channel", f"Unknown channel {name!r}.", _str(name))
            return
        sub = conn.subscriptions.pop(channel.name, None)
        if sub is not None:
            await sub.close()
        conn.reply({"type": "unsubscribed", "channel": channel.name})


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _connections_of(hub: Hub, principal: Principal) -> int:
    return sum(
        1
        for c in hub.connections
        if isinstance(c, Connection) and c.principal.token_id == principal.token_id
    )


_INBOX_SIZE = 64  # client messages read ahead of the one being handled


async def _handle_messages(protocol: Protocol, inbox: list[str | bytes]) -> None:
    """Handle the messages in `inbox` in order, then end (started again for the next)."""
    me = asyncio.current_task()
    await _handle_inbox(protocol, inbox, me)
    if protocol.handler is me:
        # Done without failing: an idle socket keeps neither this task nor its inbox
        # (objects every full garbage collection would walk for the socket's lifetime).
        protocol.handler = protocol.inbox = None


async def _handle_inbox(
    protocol: Protocol, inbox: list[str | bytes], me: asyncio.Task[Any] | None
) -> None:
    while inbox:
        if me is not None and me.cancelling():
            # Our cancellation was swallowed on the way through a handler (a library
            # catching CancelledError, asyncio.timeout racing it): honour it here, or
            # the peer's connection would wait on its inbox forever.
            raise asyncio.CancelledError
        raw = inbox.pop(0)
        try:
            await protocol.handle(raw)
        except (asyncio.CancelledError, WebSocketDisconnect):
            raise
        except Exception:
            log.exception("handling a WebSocket message failed; closing the connection")
            with contextlib.suppress(Exception):
                await protocol.conn.websocket.close(CLOSE_INTERNAL_ERROR)
            raise


async def _stop(handler: asyncio.Task[None]) -> None:
    """Cancel the message handler and wait until it has ended, asking again if needed."""
    attempts = 0
    while not handler.done():
        handler.cancel()
        await asyncio.wait({handler}, timeout=1.0)
        attempts += 1
        if attempts == 10 and not handler.done():
            # Say once where it is stuck: a handler that outlives its connection is a bug.
            log.error(
                "a WebSocket message handler ignores its cancellation:\n%s",
                "\n".join(await_chain(handler)),
            )
    if not handler.cancelled():
        with contextlib.suppress(Exception):
            handler.result()


def _handler_failed(protocol: Protocol) -> bool:
    """Whether the message handler failed (it closed the socket); forgets one that ended
    otherwise (cancelled)."""
    handler = protocol.handler
    if handler is None or not handler.done():
        return False
    if not handler.cancelled() and handler.exception() is not None:
        return True
    protocol.handler = protocol.inbox = None
    return False


async def run_session(
    websocket: WebSocket,
    principal: Principal,
    *,
    settings: Settings,
    hub: Hub,
    channels: ChannelAuthorizer,
) -> None:
    """Serve an accepted, authenticated socket until it closes (docs/api.md §10)."""
    limit = settings.ws_max_connections_per_token
    if limit and _connections_of(hub, principal) >= limit:
        # Checked and counted with no await in between, so concurrent handshakes cannot
        # both slip under the limit.
        await websocket.close(CLOSE_TOO_MANY_CONNECTIONS, f"At most {limit} connections per token.")
        return
    conn = Connection(websocket, principal, hub, settings.ws_send_queue_size)
    hub.connections.add(conn)
    conn.start()
    protocol = Protocol(settings, hub, channels, conn)
    # Messages are handled in order by a task of their own, so that a peer that leaves
    # while a subscribe waits for the database is noticed at once and its work cancelled
    # (under churn, abandoned subscribes otherwise queue for database slots for seconds).
    # The task runs while messages wait and ends when they are handled: an idle socket
    # holds no handler task and no inbox, and uvicorn stops reading from a peer whose
    # message has not been received yet (its flow control) while the inbox is full.
    proto = conn._proto
    queue = proto.queue if proto is not None and isinstance(proto.queue, Inbox) else None
    try:
        while not conn.closed:
            if queue is not None:
                ready = queue.ready()  # between messages, wait on a bare future (Inbox)
                if ready is not None:
                    await ready
                    del ready
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            raw = message.get("text")
            if raw is None:
                raw = message.get("bytes") or b""
            del message  # (nor is the last message kept while the socket idles)
            if _handler_failed(protocol):
                break  # it failed and closed the socket (1011)
            if protocol.handler is None or protocol.inbox is None:
                protocol.inbox = [raw]
                protocol.handler = asyncio.create_task(
                    _handle_messages(protocol, protocol.inbox), name="ws-handler"
                )
                continue
            protocol.inbox.append(raw)
            if len(protocol.inbox) >= _INBOX_SIZE:
                # Read no further until these are handled.
                await asyncio.wait({protocol.handler})
    except WebSocketDisconnect:
        pass
    finally:
        if protocol.handler is not None:
            await _stop(protocol.handler)
        hub.connections.discard(conn)
        overflowed = conn.close_code is not None
        await conn.shutdown()
        if not overflowed and websocket.application_state == WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await websocket.close()
