"""A task's output as Server-Sent Events, with resume (the route is `api/sse.py`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson

from dashboard_api.realtime.events import OutEvent
from dashboard_api.realtime.hub import Hub
from dashboard_api.realtime.sinks import QueueSink
from dashboard_api.realtime.subscriptions import TaskSubscription
from dashboard_api.task_statuses import TERMINAL_STATUSES

KEEPALIVE_SECONDS = 15.0


def sse_frame(event: OutEvent) -> tuple[bytes | None, bool]:
    """The SSE text of a hub event, and whether it ends the stream."""
    payload = event.payload
    kind = event.type
    if kind == "task_output":
        data = orjson.dumps(
            {"seq": payload["seq"], "stream": payload["stream"], "content": payload["content"]}
        )
        return b"id: %d\nevent: output\ndata: %s\n\n" % (payload["seq"], data), False
    body = {k: v for k, v in payload.items() if k not in ("type", "channel")}
    if kind == "task_status":
        final = payload.get("status") in TERMINAL_STATUSES
        return b"event: status\ndata: %s\n\n" % orjson.dumps(body), final
    if kind == "task_cancel_requested":
        return b"event: cancel_requested\ndata: %s\n\n" % orjson.dumps(body), False
    return None, False


async def open_task_stream(
    hub: Hub, task_id: str, since_seq: int, queue_size: int
) -> AsyncIterator[bytes] | None:
    """The SSE body of a task's output after `since_seq`, then live until its terminal
    status; None when there is no such task."""
    sink = QueueSink(queue_size)
    sub = TaskSubscription(hub, sink, f"task:{task_id}", task_id, since_seq)
    state = await sub.open()
    if state is None:
        return None
    sub.start()

    async def body() -> AsyncIterator[bytes]:
        try:
            yield b"retry: 1000\n\n"
            while True:
                try:
                    async with asyncio.timeout(KEEPALIVE_SECONDS):
                        event = await sink.get()
                except TimeoutError:
                    yield b": keepalive\n\n"
                    continue
                if event is None:
                    return  # overflowed: the client reconnects with Last-Event-ID
                frame, final = sse_frame(event)
                if frame is not None:
                    yield frame
                if final:
                    return
        finally:
            sink.close()
            await sub.close()

    return body()
