"""WebSocket and event helpers: JSON frames, a channel listener on the app's hub, and a
fake task history for the hub's standalone tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
from fastapi import FastAPI

from dashboard_api.realtime.history import TaskState
from dashboard_api.realtime.sinks import QueueSink
from dashboard_api.realtime.subscriptions import Subscription


async def recv_json(ws: Any, timeout: float = 10.0) -> dict[str, Any]:
    raw = await asyncio.wait_for(ws.recv(), timeout)
    value = orjson.loads(raw)
    assert isinstance(value, dict)
    return value


async def send_json(ws: Any, value: dict[str, Any]) -> None:
    await ws.send(orjson.dumps(value).decode())


async def recv_until(
    ws: Any, predicate: Callable[[dict[str, Any]], bool], timeout: float = 15.0
) -> list[dict[str, Any]]:
    """Every message up to and including the first that satisfies `predicate`."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while True:
            msg = await recv_json(ws, timeout)
            seen.append(msg)
            if predicate(msg):
                return seen


class ChannelListener:
    """Events of one channel as this replica's hub delivers them (through the broker)."""

    def __init__(self, app: FastAPI, channel: str) -> None:
        self.hub = app.state.ctx.hub
        self.sink = QueueSink(10_000)
        self.sub = Subscription(self.hub, self.sink, channel)

    async def __aenter__(self) -> ChannelListener:
        await self.hub.attach(self.sub)
        return self

    async def __aexit__(self, *_: Any) -> None:
        await self.sub.close()

    async def next(self, timeout: float = 10.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            event = await self.sink.get()
        assert event is not None
        return dict(event.payload)

    async def drain(self, settle: float = 0.3) -> list[dict[str, Any]]:
        """Everything that arrives until nothing has for `settle` seconds."""
        out: list[dict[str, Any]] = []
        while True:
            try:
                out.append(await self.next(timeout=settle))
            except TimeoutError:
                return out


Listen = Callable[[FastAPI, str], ChannelListener]


class FakeHistory:
    def __init__(self) -> None:
        self.chunks: list[dict[str, Any]] = []
        self.status = "running"
        self.reads = 0
        self.read_delay = 0.0

    def add(self, seq: int) -> dict[str, Any]:
        chunk = {"seq": seq, "stream": "stdout", "content": f"c{seq}", "created_at": "x"}
        self.chunks.append(chunk)
        return chunk

    async def task_state(self, task_id: str) -> TaskState:
        n = len(self.chunks)
        event: dict[str, Any] = {"type": "task_status", "task_id": task_id, "status": self.status}
        event |= {"output_seq": n, "updated_at": "2026-01-01T00:00:00.000Z"}
        return TaskState(task_id, self.status, n, event)

    async def chunks_after(self, task_id: str, after_seq: int, limit: int) -> list[dict[str, Any]]:
        self.reads += 1
        await asyncio.sleep(self.read_delay)
        return [c for c in self.chunks if c["seq"] > after_seq][:limit]
