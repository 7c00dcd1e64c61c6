"""The realtime layer of one app: broker + hub + Redis ingress, opened in the lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from dashboard_api.db.engine import Database
from dashboard_api.realtime.broker import Broker, BrokerUnavailable, MemoryBroker, RedisBroker
from dashboard_api.realtime.events import dumps
from dashboard_api.realtime.hub import Hub, TaskState
from dashboard_api.settings import Settings
from dashboard_api.timeutil import format_ts

log = logging.getLogger(__name__)


class DbTaskHistory:
    """Task state and stored chunks, read through the tasks service."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def task_state(self, task_id: str) -> TaskState | None:
        from dashboard_api.db.models import Task
        from dashboard_api.schemas.tasks import task_summary

        async with self.db.read() as session:
            task = await session.get(Task, task_id)
            if task is None:
                return None
            event = {"type": "task_status", **task_summary(task).model_dump(mode="json")}
            return TaskState(task.task_id, task.status, task.output_seq, event)

    async def chunks_after(self, task_id: str, after_seq: int, limit: int) -> list[dict[str, Any]]:
        from dashboard_api.services.tasks import list_chunks

        async with self.db.read() as session:
            rows = await list_chunks(session, task_id, after_seq=after_seq, limit=limit)
            return [
                {
                    "seq": r.seq,
                    "stream": r.stream,
                    "content": r.content,
                    "created_at": format_ts(r.created_at),
                }
                for r in rows
            ]


class Realtime:
    """Broker, hub and (with Redis) the ingress of one replica."""

    def __init__(self, settings: Settings, db: Database, history: Any = None) -> None:
        self.settings = settings
        self.db = db
        self.broker: Broker
        if settings.redis_url:
            self.broker = RedisBroker(settings.redis_url, prefix=settings.redis_prefix + "ev:")
        else:
            self.broker = MemoryBroker()
        self.hub = Hub(
            self.broker,
            history or DbTaskHistory(db),
            buffer_limit=settings.ws_send_queue_size,
            write_interval=settings.ws_write_interval_ms / 1000,
            # Resume replays: most of the pool (whose overflow is as large again), so that
            # churning subscribers are not served four at a time; HTTP keeps the rest.
            db_concurrency=max(2, settings.database_pool_size * 4 // 5),
        )
        self.ingress: Any = None
        self.publish_failures = 0

    async def publish(self, events: Sequence[tuple[str, dict[str, Any]]]) -> None:
        """`Database.publisher`: fan out committed events; never raises."""
        try:
            messages = [
                (channel, dumps({**payload, "channel": channel})) for channel, payload in events
            ]
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

    async def start(self, ctx: Any = None) -> None:
        await self.broker.start()
        if isinstance(self.broker, RedisBroker) and ctx is not None:
            from dashboard_api.realtime.ingress import Ingress

            self.ingress = Ingress(ctx, self.settings, lease_ms=self.settings.ingress_lease_ms)
            await self.ingress.start()

    async def close(self) -> None:
        if self.ingress is not None:
            await self.ingress.close()
        await self.hub.close()
        await self.broker.close()


@asynccontextmanager
async def realtime_lifespan(ctx: Any) -> AsyncIterator[Realtime]:
    """Open the realtime layer for an `AppContext` and hook it to the database publisher."""
    rt = Realtime(ctx.settings, ctx.db)
    ctx.broker = rt.broker
    ctx.hub = rt.hub
    ctx.extras["realtime"] = rt
    await rt.start(ctx)
    ctx.db.publisher = rt.publish
    try:
        yield rt
    finally:
        ctx.db.publisher = None
        await rt.close()


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
