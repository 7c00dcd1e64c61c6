"""The hub's ordering rules, standalone (in-process broker, a fake history)."""

from __future__ import annotations

import asyncio
from typing import Any

from dashboard_api.realtime.broker import MemoryBroker
from dashboard_api.realtime.events import OutEvent, dumps
from dashboard_api.realtime.hub import Hub, QueueSink, TaskState, TaskSubscription


class FakeHistory:
    def __init__(self) -> None:
        self.chunks: list[dict[str, Any]] = []
        self.status = "running"
        self.reads = 0

    def add(self, seq: int) -> dict[str, Any]:
        chunk = {"seq": seq, "stream": "stdout", "content": f"c{seq}", "created_at": "x"}
        self.chunks.append(chunk)
        return chunk

    async def task_state(self, task_id: str) -> TaskState:
        n = len(self.chunks)
        event = {"type": "task_status", "task_id": task_id, "status": self.status}
        event |= {"output_seq": n, "updated_at": "2026-01-01T00:00:00.000Z"}
        return TaskState(task_id, self.status, n, event)

    async def chunks_after(self, task_id: str, after_seq: int, limit: int) -> list[dict[str, Any]]:
        self.reads += 1
        return [c for c in self.chunks if c["seq"] > after_seq][:limit]


async def _publish(broker: MemoryBroker, chunk: dict[str, Any]) -> None:
    payload = {"type": "task_output", "task_id": "t", "channel": "task:t", **chunk}
    await broker.publish("task:t", dumps(payload))


async def _take(sink: QueueSink, n: int) -> list[OutEvent]:
    out = []
    async with asyncio.timeout(5):
        for _ in range(n):
            event = await sink.get()
            assert event is not None
            out.append(event)
    return out


async def _open(gap_wait: float) -> tuple[MemoryBroker, FakeHistory, Hub, QueueSink]:
    broker, history = MemoryBroker(), FakeHistory()
    hub = Hub(broker, history, gap_wait=gap_wait)
    sink = QueueSink(100)
    sub = TaskSubscription(hub, sink, "task:t", "t", None)
    assert await sub.open() is not None
    sub.start()
    return broker, history, hub, sink


async def test_events_out_of_commit_order_are_reordered_without_the_database() -> None:
    broker, history, hub, sink = await _open(gap_wait=5.0)
    one, two, three = history.add(1), history.add(2), history.add(3)
    await _publish(broker, two)
    await _publish(broker, three)
    await _publish(broker, one)  # the missing one arrives: no need to wait or read
    events = await _take(sink, 3)
    assert [e.seq for e in events] == [1, 2, 3]
    assert history.reads == 0
    await hub.close()


async def test_a_gap_the_broker_never_fills_is_read_from_the_database() -> None:
    broker, history, hub, sink = await _open(gap_wait=0.01)
    history.add(1)
    history.add(2)
    three = history.add(3)
    await _publish(broker, three)  # 1 and 2 were never published (e.g. a broker outage)
    events = await _take(sink, 3)
    assert [e.seq for e in events] == [1, 2, 3]
    assert history.reads >= 1
    # Duplicates from the broker afterwards are dropped.
    await _publish(broker, three)
    four = history.add(4)
    await _publish(broker, four)
    assert [e.seq for e in await _take(sink, 1)] == [4]
    await hub.close()


async def test_concurrent_gap_fills_share_one_database_read() -> None:
    broker, history = MemoryBroker(), FakeHistory()
    hub = Hub(broker, history, gap_wait=0.01)
    sinks = []
    for _ in range(50):
        sink = QueueSink(100)
        sub = TaskSubscription(hub, sink, "task:t", "t", None)
        assert await sub.open() is not None
        sub.start()
        sinks.append(sink)
    history.add(1)
    await _publish(broker, history.add(2))
    for sink in sinks:
        assert [e.seq for e in await _take(sink, 2)] == [1, 2]
    assert history.reads <= 2
    await hub.close()
