"""The realtime layer of one app: broker + hub, opened in the lifespan.

What it needs from the rest of the app is handed in by `create_app`: the task history the
hub resumes from (`TaskHistory`) and the owner lookups of feature channels
(`ChannelAuthorizer`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from starlette.websockets import WebSocket

from dashboard_api.auth import Principal
from dashboard_api.db.engine import Database
from dashboard_api.realtime.broker import Broker, BrokerUnavailable, MemoryBroker, RedisBroker
from dashboard_api.realtime.channels import ChannelAuthorizer
from dashboard_api.realtime.events import dumps
from dashboard_api.realtime.history import TaskHistory
from dashboard_api.realtime.hub import Hub
from dashboard_api.realtime.sse import open_task_stream
from dashboard_api.realtime.ws import run_session
from dashboard_api.settings import Settings

log = logging.getLogger(__name__)


class Realtime:
    """Broker and hub of one replica; serves `/ws` sessions and SSE task streams."""

    def __init__(
        self,
        settings: Settings,
        history: TaskHistory,
        channels: ChannelAuthorizer | None = None,
    ) -> None:
        self.settings = settings
        self.channels = channels or ChannelAuthorizer()
        self.broker: Broker
        if settings.redis_url:
            self.broker = RedisBroker(settings.redis_url, prefix=settings.redis_prefix + "ev:")
        else:
            self.broker = MemoryBroker()
        self.hub = Hub(
            self.broker,
            history,
            buffer_limit=settings.ws_send_queue_size,
            write_interval=settings.ws_write_interval_ms / 1000,
            # Resume replays: less than half the pool (twice the setting), so that
            # churning subscribers are not served four at a time; HTTP keeps the rest.
            db_concurrency=max(2, settings.database_pool_size * 4 // 5),
        )
        self.publish_failures = 0

    async def publish(self, events: Sequence[tuple[str, dict[str, Any]]]) -> None:
        """`Database.publisher`: fan out committed events; never raises."""
        try:
            messages = _messages(events)
        except Exception:
            log.exception("could not serialize events; dropped")
            return
        try:
            await self.broker.publish_many(messages)
        except BrokerUnavailable as exc:
            self.publish_failures += len(messages)
            log.warning("broker publish failed (%s); delivering to local subscribers only", exc)
            for channel, data in messages:
                self.hub.on_message(channel, data)
        except Exception:
            self.publish_failures += len(messages)
            log.exception("broker publish failed")

    def serve_websocket(self, websocket: WebSocket, principal: Principal) -> Awaitable[None]:
        """Serve an accepted, authenticated `/ws` socket until it closes (awaited by the
        caller: no frame of its own for the socket's lifetime)."""
        return run_session(
            websocket, principal, settings=self.settings, hub=self.hub, channels=self.channels
        )

    async def task_stream(self, task_id: str, since_seq: int) -> AsyncIterator[bytes] | None:
        """The SSE body of a task's output after `since_seq`; None when there is no task."""
        return await open_task_stream(
            self.hub, task_id, since_seq, self.settings.ws_send_queue_size
        )

    async def start(self) -> None:
        await self.broker.start()

    async def close(self) -> None:
        await self.hub.close()
        await self.broker.close()


@asynccontextmanager
async def realtime_lifespan(rt: Realtime, db: Database) -> AsyncIterator[Realtime]:
    """Open the realtime layer and make it the database's publisher of committed events."""
    await rt.start()
    db.publisher = rt.publish
    try:
        yield rt
    finally:
        db.publisher = None
        await rt.close()


def _messages(events: Sequence[tuple[str, dict[str, Any]]]) -> list[tuple[str, bytes]]:
    """Each event's message: its payload with its `channel`. A payload queued on several
    channels (a task_status on `task:{id}` and `tasks`) is serialized once, the channel
    put in front of its fields."""
    serialized: dict[int, bytes] = {}  # by id(): the payloads are alive in `events`
    out = []
    for channel, payload in events:
        body = serialized.get(id(payload))
        if body is None:
            body = serialized[id(payload)] = dumps(payload)
        if body == b"{}" or "channel" in payload:  # nothing to follow, or replaced
            out.append((channel, dumps({**payload, "channel": channel})))
        else:
            out.append((channel, b'{"channel":' + dumps(channel) + b"," + body[1:]))
    return out


def uvicorn_ws_options(settings: Settings) -> dict[str, Any]:
    """uvicorn keyword arguments for the WebSocket side (pings, frame size, no compression).

    Messages over `ws_max_message_bytes` get a `message_too_large` error from the app; the
    transport limit is set well above it so that such a message does not kill the socket.
    Compression is off: the hub writes each event's frame once for all its subscribers.
    """
    return {
        "ws_ping_interval": settings.ws_ping_interval_seconds,
        "ws_ping_timeout": settings.ws_ping_timeout_seconds,
        "ws_max_size": max(1024 * 1024, settings.ws_max_message_bytes * 16),
        "ws_per_message_deflate": False,
    }
