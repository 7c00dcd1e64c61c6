"""The hub's ordering rules, standalone (in-process broker, a fake history)."""

from __future__ import annotations

import asyncio
from typing import Any

from dashboard_api.realtime.broker import MemoryBroker
from dashboard_api.realtime.events import OutEvent, dumps
from dashboard_api.realtime.history import TaskState
from dashboard_api.realtime.hub import Hub
from dashboard_api.realtime.sinks import QueueSink
from dashboard_api.realtime.subscriptions import TaskSubscription
from tests.support.ws import FakeHistory


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
    # A read that takes a while, as a real one does: the other 49 gaps are noticed while it
    # runs, however slowly this machine runs the 50 subscribers' timers.
    history.read_delay = 0.2
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


class GatedHistory(FakeHistory):
    """Reads wait at a gate, so that the test controls when database slots free up."""

    def __init__(self) -> None:
        super().__init__()
        self.state_gate = asyncio.Event()
        self.chunk_gate = asyncio.Event()
        self.state_reads = 0
        self.reads_started: list[int] = []

    async def task_state(self, task_id: str) -> TaskState:
        self.state_reads += 1
        await self.state_gate.wait()
        return await super().task_state(task_id)

    async def chunks_after(self, task_id: str, after_seq: int, limit: int) -> list[dict[str, Any]]:
        self.reads_started.append(after_seq)
        await self.chunk_gate.wait()
        return await super().chunks_after(task_id, after_seq, limit)


async def test_subscribers_that_leave_give_up_their_queued_replay_reads() -> None:
    history = GatedHistory()
    for seq in range(1, 31):
        history.add(seq)
    hub = Hub(MemoryBroker(), history, db_concurrency=1)
    history.state_gate.set()  # states answer at once; replays wait at the gate

    async def subscribe(since: int) -> tuple[TaskSubscription, QueueSink]:
        sink = QueueSink(100)
        sub = TaskSubscription(hub, sink, "task:t", "t", since)
        assert await sub.open() is not None
        sub.start()
        return sub, sink

    first, first_sink = await subscribe(0)  # takes the only replay slot and waits there
    leavers = [await subscribe(since) for since in range(1, 11)]
    await asyncio.sleep(0)
    for sub, _ in leavers:
        await sub.close()
    last, last_sink = await subscribe(20)
    history.chunk_gate.set()
    assert [e.seq for e in await _take(first_sink, 30)] == list(range(1, 31))
    assert [e.seq for e in await _take(last_sink, 10)] == list(range(21, 31))
    # The ten that left never reached the database.
    assert sorted(history.reads_started) == [0, 20]
    await first.close()
    await last.close()
    await hub.close()


async def test_subscribers_queued_for_a_state_read_share_it() -> None:
    history = GatedHistory()
    hub = Hub(MemoryBroker(), history, db_concurrency=2)  # one slot for state reads
    subs = [TaskSubscription(hub, QueueSink(10), "task:t", "t", None) for _ in range(20)]
    opening = [asyncio.create_task(sub.open()) for sub in subs]
    await asyncio.sleep(0.01)
    history.state_gate.set()
    assert all(state is not None for state in await asyncio.gather(*opening))
    # The first may have started its read before the others asked; they all share the next.
    assert history.state_reads <= 2
    await hub.close()


async def test_a_read_its_waiters_abandoned_is_not_handed_to_a_newcomer() -> None:
    history = FakeHistory()
    history.add(1)
    history.read_delay = 0.05
    hub = Hub(MemoryBroker(), history)
    first = asyncio.create_task(hub.chunks_after("t", 0, 10, 0.0))
    await asyncio.sleep(0)  # the first subscriber asks: the shared read starts
    first.cancel()
    await asyncio.sleep(0)  # it leaves: the read is cancelled, but not finished yet
    # A subscriber asking now gets the chunks, not the abandoned read's cancellation.
    second = await asyncio.wait_for(hub.chunks_after("t", 0, 10, 0.0), 5)
    assert [c["seq"] for c in second] == [1]
    assert first.cancelled()
    await hub.close()
