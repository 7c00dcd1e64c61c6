"""Channel groups (`realtime/hub.py` `Group`): one shared write for the caught-up
subscribers of a channel, without losing, repeating or reordering anything for anyone.

The hub runs standalone here (in-process broker, a fake history); the sinks behave like
sockets: they take data at once unless blocked (a peer that stopped reading), and then
queue. The end-to-end counterpart on real sockets is in `test_write_path.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from dashboard_api.realtime import groups
from dashboard_api.realtime.broker import MemoryBroker
from dashboard_api.realtime.events import OutEvent, dumps
from dashboard_api.realtime.hub import Hub
from dashboard_api.realtime.sinks import QueueSink
from dashboard_api.realtime.subscriptions import Subscription, TaskSubscription
from tests.support.ws import FakeHistory


def _frames(data: bytes) -> list[dict[str, Any]]:
    """The payloads of unmasked server text frames."""
    out = []
    pos = 0
    while pos < len(data):
        n = data[pos + 1] & 0x7F
        hdr = 2
        if n == 126:
            n = int.from_bytes(data[pos + 2 : pos + 4], "big")
            hdr = 4
        elif n == 127:
            n = int.from_bytes(data[pos + 2 : pos + 10], "big")
            hdr = 10
        out.append(orjson.loads(data[pos + hdr : pos + hdr + n]))
        pos += hdr + n
    return out


class SocketSink(QueueSink):
    """Written at once while its peer reads; queued (up to its size) while it is blocked."""

    def __init__(self, size: int = 10_000) -> None:
        super().__init__(size)
        self.out: list[dict[str, Any]] = []
        self.blocked = False
        self.shared_writes = 0

    def offer(self, event: OutEvent) -> bool:
        if self.closed:
            return False
        if not self.blocked and not self.queue:
            self.out.append(event.payload)
            return True
        return super().offer(event)

    async def put(self, event: OutEvent) -> None:
        if not self.blocked and not self.queue and not self.closed:
            self.out.append(event.payload)
            return
        await super().put(event)

    def can_share(self) -> bool:
        return not self.blocked and not self.queue and not self.closed

    def write_shared(self, data: bytes) -> bool:
        if not self.can_share():
            return False
        self.shared_writes += 1
        self.out.extend(_frames(data))
        return True

    def unblock(self) -> None:
        self.blocked = False
        while self.queue:
            self.out.append(self.queue.popleft().payload)
        self._note_room()

    def seqs(self) -> list[int]:
        return [m["seq"] for m in self.out if m["type"] == "task_output"]


async def _publish(broker: MemoryBroker, payload: dict[str, Any]) -> None:
    await broker.publish("task:t", dumps({"task_id": "t", "channel": "task:t", **payload}))


async def _output(broker: MemoryBroker, chunk: dict[str, Any]) -> None:
    await _publish(broker, {"type": "task_output", **chunk})


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def _subscribers(hub: Hub, n: int) -> list[SocketSink]:
    sinks = []
    for _ in range(n):
        sink = SocketSink()
        sub = TaskSubscription(hub, sink, "task:t", "t", 0)
        assert await sub.open() is not None
        sub.start()
        sinks.append(sink)
    await _settle()
    return sinks


async def test_caught_up_subscribers_share_one_write_per_interval() -> None:
    broker, history = MemoryBroker(), FakeHistory()
    hub = Hub(broker, history, write_interval=0.05, write_slice=3)
    sinks = await _subscribers(hub, 10)
    await _output(broker, history.add(1))  # each sends it alone, then joins the group
    group = hub._groups["task:t"]
    assert len(group.members) == 10
    assert not group.loose
    delivered = hub.events_delivered
    for seq in range(2, 41):
        await _output(broker, history.add(seq))
    assert hub.events_delivered - delivered == 39 * 10
    async with asyncio.timeout(5):
        while any(len(s.seqs()) < 40 for s in sinks):
            await asyncio.sleep(0.01)
    for sink in sinks:
        assert sink.seqs() == list(range(1, 41))
        # 39 events published at once: one shared write (two if a timer fell in between).
        assert sink.shared_writes <= 2
    await hub.close()


async def test_a_member_that_stops_reading_is_closed_alone() -> None:
    broker, history = MemoryBroker(), FakeHistory()
    hub = Hub(broker, history, write_interval=0.0)
    fast, slow = await _subscribers(hub, 2)
    slow.size = 5  # a small send queue: it overflows quickly
    await _output(broker, history.add(1))
    slow.blocked = True
    for seq in range(2, 30):
        await _output(broker, history.add(seq))
        await _settle()
    assert slow.closed
    assert slow.overflowed
    assert fast.seqs() == list(range(1, 30))
    assert not fast.closed
    assert len(hub._groups["task:t"].members) == 1
    await hub.close()


async def test_events_gathered_for_members_go_out_before_a_status() -> None:
    broker, history = MemoryBroker(), FakeHistory()
    hub = Hub(broker, history, write_interval=0.05)
    sinks = await _subscribers(hub, 3)
    await _output(broker, history.add(1))
    for seq in (2, 3, 4):  # gathered for the shared write, not written yet
        await _output(broker, history.add(seq))
    group = hub._groups["task:t"]
    assert len(group.members) == 3
    assert len(group.events) == 3
    status = {"type": "task_status", "status": "running", "output_seq": 4}
    await _publish(broker, status | {"updated_at": "2026-01-01T00:00:00.000Z"})
    assert not group.members  # judged per subscription, after what each was due
    await _output(broker, history.add(5))
    assert len(group.members) == 3  # and back again
    await asyncio.sleep(0.1)
    for sink in sinks:
        assert [(m["type"], m.get("seq")) for m in sink.out] == [
            *(("task_output", seq) for seq in (1, 2, 3, 4)),
            ("task_status", None),
            ("task_output", 5),
        ]
    await hub.close()


async def test_a_member_that_joins_while_events_gather_gets_only_its_part() -> None:
    broker, history = MemoryBroker(), FakeHistory()
    hub = Hub(broker, history, write_interval=0.05)
    a, b = await _subscribers(hub, 2)
    group = hub._groups["task:t"]
    await _output(broker, history.add(1))
    await _settle()
    b.blocked = True
    await _output(broker, history.add(2))
    await _settle()  # the shared write: b cannot take it and leaves with seq 2 queued
    assert len(group.members) == 1
    await _output(broker, history.add(3))  # a: gathered (written in 50 ms); b: queued
    b.unblock()
    await _output(broker, history.add(4))  # b sends it itself and joins, after 3 and 4
    assert len(group.members) == 2
    await _output(broker, history.add(5))
    await asyncio.sleep(0.1)
    assert a.seqs() == b.seqs() == [1, 2, 3, 4, 5]
    await hub.close()


async def test_chunks_out_of_order_are_held_for_the_group_not_sent_apart() -> None:
    broker, history = MemoryBroker(), FakeHistory()
    hub = Hub(broker, history, write_interval=0.0, gap_wait=5.0)
    sinks = await _subscribers(hub, 3)
    await _output(broker, history.add(1))
    group = hub._groups["task:t"]
    assert len(group.members) == 3
    two, three, four = history.add(2), history.add(3), history.add(4)
    await _output(broker, four)  # two concurrent appends committed 2-3 then 4
    await _output(broker, three)
    assert len(group.members) == 3  # held for everyone, nobody sent off on its own
    assert sorted(group.held) == [3, 4]
    await _output(broker, two)  # the missing one: all three go out, in order
    assert not group.held
    await _output(broker, history.add(5))
    await _settle()
    for sink in sinks:
        assert sink.seqs() == [1, 2, 3, 4, 5]
    assert hub.group_leaves == 0
    assert hub.events_delivered_shared == 4 * 3
    await hub.close()


async def test_a_gap_not_filled_in_time_sends_members_to_the_database() -> None:
    broker, history = MemoryBroker(), FakeHistory()
    hub = Hub(broker, history, write_interval=0.0, gap_wait=0.01)
    sinks = await _subscribers(hub, 3)
    await _output(broker, history.add(1))
    group = hub._groups["task:t"]
    history.add(2)  # stored, but its event never arrives (lost by the broker)
    await _output(broker, history.add(3))
    assert len(group.members) == 3
    async with asyncio.timeout(5):
        while any(s.seqs() != [1, 2, 3] for s in sinks):
            await asyncio.sleep(0.005)
    assert hub.group_dissolves == 1
    assert hub.group_leaves == 3
    await _output(broker, history.add(4))  # caught up again: back in the group
    assert len(group.members) == 3
    await _settle()
    for sink in sinks:
        assert sink.seqs() == [1, 2, 3, 4]
    await hub.close()


async def test_a_member_leaving_while_chunks_are_held_gets_them_in_order() -> None:
    broker, history = MemoryBroker(), FakeHistory()
    hub = Hub(broker, history, write_interval=0.0, gap_wait=5.0)
    a, b = await _subscribers(hub, 2)
    await _output(broker, history.add(1))
    group = hub._groups["task:t"]
    two, three = history.add(2), history.add(3)
    await _output(broker, three)  # held
    b.blocked = True
    await _output(broker, two)  # the shared write finds b blocked: it leaves with 2, 3
    await _settle()
    assert len(group.members) == 1
    b.unblock()
    await _output(broker, history.add(4))
    await _settle()
    assert a.seqs() == b.seqs() == [1, 2, 3, 4]
    assert hub.group_leaves == 1
    b_sub = next(sub for sub in hub._channels["task:t"] if sub.sink is b)
    await b_sub.close()  # unsubscribing is no leave back to the per-subscription path
    assert hub.group_leaves == 1
    await hub.close()


# Steps of a producer and of readers. The broker may repeat or reorder a pair of events
# (concurrent writers), deliver one late behind up to 4 others, skip one (the database
# has it), and a status update arrives now and then; readers stop and start reading;
# time passes (longer than the group's gap wait, so that held chunks are given up on).
_STEP = st.one_of(
    st.tuples(st.just("next"), st.integers(1, 5)),
    st.tuples(st.just("repeat"), st.just(0)),
    st.tuples(st.just("swap"), st.just(0)),
    st.tuples(st.just("skip"), st.just(0)),
    st.tuples(st.just("status"), st.just(0)),
    st.tuples(st.just("block"), st.integers(0, 3)),
    st.tuples(st.just("unblock"), st.integers(0, 3)),
    st.tuples(st.just("tick"), st.just(0)),
    st.tuples(st.just("late"), st.integers(1, 4)),
    st.tuples(st.just("wait"), st.just(0)),
)


@given(
    steps=st.lists(_STEP, max_size=40),
    interval=st.sampled_from([0.0, 0.002]),
    paced=st.booleans(),
)
def test_every_subscriber_gets_every_seq_once_in_order(
    steps: list[tuple[str, int]], interval: float, paced: bool
) -> None:
    if not paced:
        asyncio.run(_run_steps(steps, interval))
        return
    # Every group paced as a large one is (its writes 3 ms apart, on their own timers).
    with _pace(factor=1e6, cap=0.003):
        asyncio.run(_run_steps(steps, interval))


@contextlib.contextmanager
def _pace(factor: float, cap: float) -> Iterator[None]:
    saved = groups.PACE_FROM, groups.PACE_FACTOR, groups.PACE_MAX
    groups.PACE_FROM, groups.PACE_FACTOR, groups.PACE_MAX = 0.0, factor, cap
    try:
        yield
    finally:
        groups.PACE_FROM, groups.PACE_FACTOR, groups.PACE_MAX = saved


async def test_a_large_groups_writes_are_paced_and_carry_what_gathered() -> None:
    """A group whose write takes long (here: made to look so) is written at most once per
    its pace: the events published meanwhile share the next write, in order."""
    broker, history = MemoryBroker(), FakeHistory()
    hub = Hub(broker, history, write_interval=0.0, write_slice=2)
    sinks = []
    for _ in range(5):
        sink = SocketSink()
        sub = Subscription(hub, sink, "tasks")
        await hub.attach(sub)
        sinks.append(sink)
    with _pace(factor=1e6, cap=0.2):
        # The first event: each subscription sends it alone and joins the group.
        await broker.publish("tasks", dumps({"type": "task_status", "task_id": "s0"}))
        await _settle()
        group = hub._groups["tasks"]
        assert len(group.members) == 5
        for i in range(1, 4):
            await broker.publish("tasks", dumps({"type": "task_status", "task_id": f"s{i}"}))
            await _settle()
        await asyncio.sleep(0.05)
        for i in range(4, 10):
            await broker.publish("tasks", dumps({"type": "task_status", "task_id": f"s{i}"}))
        await _settle()
        assert group.pace == 0.2
        assert group.events  # held until its pace has passed since its last write
        async with asyncio.timeout(5):
            while any(len(s.out) < 10 for s in sinks):
                await asyncio.sleep(0.01)
    for sink in sinks:
        assert [m["task_id"] for m in sink.out] == [f"s{i}" for i in range(10)]
        assert sink.shared_writes <= 3
    await hub.close()


_OUTPUT_STEPS = ("next", "swap", "late", "skip")


async def _output_step(
    broker: MemoryBroker,
    history: FakeHistory,
    add: Callable[[], Awaitable[dict[str, Any]]],
    kind: str,
    arg: int,
) -> None:
    """One step that adds chunks to the history and publishes them in some order."""
    if kind == "next":
        for _ in range(arg):
            await _output(broker, await add())
    elif kind == "repeat":
        await _output(broker, history.chunks[-1])
    elif kind == "swap":
        one, two = await add(), await add()
        await _output(broker, two)
        await _output(broker, one)
    elif kind == "late":
        first = await add()
        for _ in range(arg):
            await _output(broker, await add())
        await _output(broker, first)
    else:  # skip: a chunk stored but never published
        await add()


async def _run_steps(steps: list[tuple[str, int]], interval: float) -> None:
    broker, history = MemoryBroker(), FakeHistory()
    hub = Hub(broker, history, write_interval=interval, write_slice=2, gap_wait=0.001)
    sinks = await _subscribers(hub, 4)
    last = 0

    async def add() -> dict[str, Any]:
        nonlocal last
        last += 1
        return history.add(last)

    for kind, arg in steps:
        if kind in _OUTPUT_STEPS or (kind == "repeat" and last):
            await _output_step(broker, history, add, kind, arg)
        elif kind == "wait":
            await asyncio.sleep(0.005)  # past the group's gap wait (3 x 1 ms)
        elif kind == "status":
            status = {"type": "task_status", "status": "running", "output_seq": last}
            await _publish(broker, status | {"updated_at": "2026-01-01T00:00:00.000Z"})
        elif kind == "block":
            sinks[arg].blocked = True
        elif kind == "unblock":
            sinks[arg].unblock()
        else:
            await _settle()
    for sink in sinks:
        sink.unblock()
    await _output(broker, await add())  # the last one: nothing may be missing before it
    async with asyncio.timeout(10):
        while any(len(s.seqs()) < last for s in sinks):
            await asyncio.sleep(0.005)
            for sink in sinks:
                sink.unblock()
    for sink in sinks:
        assert sink.seqs() == list(range(1, last + 1))
        assert not sink.closed
    await hub.close()
