"""The per-replica hub: channels → subscriptions → sinks with bounded send queues.

Every broker message is parsed and serialized once per replica (`OutEvent`) and offered to
each local subscription, except those in the channel's `Group` (caught up, socket ready),
which get it once for all through one shared write. A `task:{id}` subscription keeps the
seq of the last chunk it sent, so that resume, replay and cross-replica reordering never
produce a gap or a duplicate: while it syncs from the database it buffers live events,
and a live event that would leave a gap sends it back to the database first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from dashboard_api.aiotasks import raise_if_cancelled, stop_tasks
from dashboard_api.realtime.broker import Broker
from dashboard_api.realtime.events import TERMINAL_STATUSES, OutEvent, output_event

log = logging.getLogger(__name__)


@dataclass(slots=True)
class TaskState:
    """What resume needs to know about a task at one moment."""

    task_id: str
    status: str
    output_seq: int
    status_event: dict[str, Any] = field(default_factory=dict)  # a task_status payload

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL_STATUSES


class TaskHistory(Protocol):
    """Read access to stored tasks and their output (the database)."""

    async def task_state(self, task_id: str) -> TaskState | None: ...

    async def chunks_after(
        self, task_id: str, after_seq: int, limit: int
    ) -> list[dict[str, Any]]: ...


class SinkClosed(Exception):
    """The sink does not take events anymore."""


class Sink(ABC):
    """Where a subscription's events go: a WebSocket connection or an SSE response."""

    closed: bool = False

    @abstractmethod
    def offer(self, event: OutEvent) -> bool:
        """Queue without waiting; a sink whose queue is full closes itself and returns False."""

    @abstractmethod
    async def put(self, event: OutEvent) -> None:
        """Queue, waiting for room (used by replays); raises `SinkClosed`."""

    def can_share(self) -> bool:
        """Whether bytes written for a whole channel may go to this sink right now (it
        takes data at once and has nothing queued): only then may it be a group member."""
        return False

    def write_shared(self, data: bytes) -> bool:
        """Write a channel's shared bytes after anything of the sink's own that waits, if
        it can share right now (see `can_share`); False (nothing written) if not."""
        raise NotImplementedError


class QueueSink(Sink):
    """A bounded queue read by one consumer task (the base of WebSocket and SSE sinks)."""

    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self.queue: deque[OutEvent] = deque()
        self.closed = False
        self.overflowed = False
        self._wakeup = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()

    def offer(self, event: OutEvent) -> bool:
        if self.closed:
            return False
        if len(self.queue) >= self.size:
            self.overflowed = True
            self.on_overflow()
            return False
        self.queue.append(event)
        self._wakeup.set()
        return True

    async def put(self, event: OutEvent) -> None:
        # Replays leave half of the queue to live events, so that a long replay on one
        # channel never pushes a connection over its limit by itself.
        limit = max(1, self.size // 2)
        while len(self.queue) >= limit and not self.closed:
            self._room.clear()
            await self._room.wait()
        if self.closed:
            raise SinkClosed
        self.queue.append(event)
        self._wakeup.set()

    def close(self) -> None:
        """Stop taking events and wake every waiter."""
        self.closed = True
        self._wakeup.set()
        self._room.set()

    def on_overflow(self) -> None:
        self.close()

    async def get(self) -> OutEvent | None:
        """The next event, or None once closed."""
        while not self.queue:
            if self.closed:
                return None
            self._wakeup.clear()
            await self._wakeup.wait()
        event = self.queue.popleft()
        self._note_room()
        return event

    def _note_room(self) -> None:
        if len(self.queue) < max(1, self.size // 2):
            self._room.set()


class Subscription:
    """One sink's interest in one channel."""

    def __init__(self, hub: Hub, sink: Sink, channel: str) -> None:
        self.hub = hub
        self.sink = sink
        self.channel = channel
        self.active = True
        self.group: Group | None = None  # set by the hub on attach

    def deliver(self, event: OutEvent) -> None:
        """A live event of the channel (called by the hub, must not block)."""
        self.offer(event)
        group = self.group
        if group is not None:
            group.join(self)

    def caught_up(self, seq: int) -> None:
        """Leaving the channel's group, which had sent everything up to `seq` (tasks)."""

    def offer(self, event: OutEvent) -> None:
        """Queue a live event on the sink, counting it as delivered or dropped."""
        if self.sink.offer(event):
            self.hub.events_delivered += 1
        else:
            self.hub.events_dropped += 1

    async def put(self, event: OutEvent) -> None:
        """Queue a replayed event, waiting for room; raises `SinkClosed`."""
        await self.sink.put(event)
        self.hub.events_delivered += 1

    async def close(self) -> None:
        """Stop receiving events."""
        self.active = False
        await self.hub.detach(self)


_SEND, _SKIP, _GAP = 0, 1, 2


class TaskSubscription(Subscription):
    """`task:{id}`: seq-ordered output with replay, gap filling and a final status."""

    def __init__(
        self, hub: Hub, sink: Sink, channel: str, task_id: str, since_seq: int | None
    ) -> None:
        super().__init__(hub, sink, channel)
        self.task_id = task_id
        self.since_seq = since_seq
        self.last_sent = 0
        self.final_updated_at: str | None = None
        self._syncing = True  # buffer until the initial sync has run
        self._buffer: deque[OutEvent] = deque()
        self._buffer_dropped = False
        self._sync_task: asyncio.Task[None] | None = None
        self._resync = False
        self._pending_state: TaskState | None = None
        self.state: TaskState | None = None
        self._need_at = 0.0  # reads must start after this (loop time) to be of use
        self._gap_filled: asyncio.Event | None = None  # set when the awaited chunk arrives

    async def open(self) -> TaskState | None:
        """Register live (buffering) first, then read the task; None when there is none."""
        await self.hub.attach(self)
        self._need_at = asyncio.get_running_loop().time()
        state = await self.hub.task_state(self.task_id, self._need_at)
        if state is None:
            await self.close()
            return None
        self.state = state
        self.last_sent = self.since_seq if self.since_seq is not None else state.output_seq
        return state

    def start(self) -> None:
        """Begin the replay (if any) and the live stream; call after `subscribed` was sent."""
        state = self.state
        assert state is not None
        replay = self.since_seq is not None and self.since_seq < state.output_seq
        self._pending_state = state if (state.ended and self.since_seq is not None) else None
        self._run_sync(read_db=replay)

    @property
    def ended(self) -> bool:
        return self.final_updated_at is not None

    # --- live ---------------------------------------------------------------------------

    def deliver(self, event: OutEvent) -> None:
        if self._syncing or not self.active:
            if self.active:
                self._buffer_event(event)
            return
        if event.seq is not None and event.seq == self.last_sent + 1:
            self.last_sent = event.seq  # the common case: the next chunk, in order
            self.offer(event)
            group = self.group
            if group is not None:
                group.join(self)  # caught up: from now on served by the shared write
            return
        verdict = self._classify(event)
        if verdict == _SEND:
            self.offer(event)
        elif verdict == _GAP:
            # Events published by concurrent writers can arrive out of commit order:
            # give the missing ones a moment to arrive before asking the database.
            self._buffer.append(event)
            self._need_at = asyncio.get_running_loop().time()
            self._gap_filled = asyncio.Event()
            self._run_sync(read_db=False, gap_wait=self.hub.gap_wait)

    def caught_up(self, seq: int) -> None:
        self.last_sent = seq

    def resync(self, *, with_state: bool = True) -> None:
        """Fill from the database what the broker may have missed (after an outage)."""
        if not self.active or self.state is None:
            return
        if self.group is not None:
            self.group.leave(self)
        self._need_at = asyncio.get_running_loop().time()
        if self._syncing:
            self._resync = True
            return
        self._run_sync(read_db=True, with_state=with_state)

    def _buffer_event(self, event: OutEvent) -> None:
        self._buffer.append(event)
        gap = self._gap_filled
        if gap is not None and event.seq is not None and event.seq == self.last_sent + 1:
            gap.set()  # the missing chunk arrived: stop waiting for it
        if len(self._buffer) > self.hub.buffer_limit:
            self._need_at = asyncio.get_running_loop().time()
            # Everything of type task_output is in the database: drop it here, read it there.
            self._buffer = deque(e for e in self._buffer if e.type != "task_output")
            self._buffer_dropped = True

    def _classify(self, event: OutEvent, *, force: bool = False) -> int:
        payload = event.payload
        kind = event.type
        if kind == "task_output":
            seq = event.seq
            if seq is None:
                return _SKIP
            if seq <= self.last_sent:
                return _SKIP
            if seq == self.last_sent + 1 or force:
                self.last_sent = seq
                return _SEND
            return _GAP
        if kind == "task_status":
            output_seq = payload.get("output_seq")
            if isinstance(output_seq, int) and output_seq > self.last_sent and not force:
                return _GAP
            updated = payload.get("updated_at")
            if self.final_updated_at is not None and (
                not isinstance(updated, str) or updated <= self.final_updated_at
            ):
                return _SKIP
            if payload.get("status") in TERMINAL_STATUSES:
                self.final_updated_at = updated if isinstance(updated, str) else ""
            return _SEND
        return _SEND

    # --- sync ---------------------------------------------------------------------------

    def _run_sync(self, *, read_db: bool, with_state: bool = False, gap_wait: float = 0) -> None:
        self._syncing = True
        self._sync_task = asyncio.create_task(self._sync(read_db, with_state, gap_wait))
        self.hub.track(self._sync_task)

    async def _sync(self, read_db: bool, with_state: bool, gap_wait: float) -> None:
        attempt = 0
        while True:
            raise_if_cancelled()
            try:
                if gap_wait:
                    gap = self._gap_filled
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(gap_wait):
                            if gap is not None:
                                await gap.wait()
                            else:
                                await asyncio.sleep(gap_wait)
                    self._gap_filled = None
                    gap_wait = 0
                await self._sync_loop(read_db, with_state)
                return
            except SinkClosed:
                self._syncing = False
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                attempt += 1
                if attempt > 3 or not self.active:
                    log.exception("sync of %s failed; closing the subscriber", self.channel)
                    self._syncing = False
                    if isinstance(self.sink, QueueSink):
                        self.sink.on_overflow()
                    return
                log.warning("sync of %s failed; retrying", self.channel, exc_info=True)
                read_db = with_state = True
                await asyncio.sleep(0.1 * 2**attempt)

    async def _sync_loop(self, read_db: bool, with_state: bool) -> None:
        history = self.hub
        forced_seq = -1
        while True:
            if with_state:
                with_state = False
                state = await history.task_state(self.task_id, self._need_at)
                if state is not None and state.ended and not self.ended:
                    self._pending_state = state
            if read_db:
                read_db = False
                self._buffer_dropped = False
                while self.active:
                    chunks = await history.chunks_after(
                        self.task_id, self.last_sent, self.hub.replay_page, self._need_at
                    )
                    for chunk in chunks:
                        if chunk["seq"] <= self.last_sent:
                            continue
                        await self.put(output_event(self.channel, self.task_id, chunk))
                        self.last_sent = chunk["seq"]
                    if len(chunks) < self.hub.replay_page:
                        break
            pending = self._pending_state
            if pending is not None and pending.output_seq <= self.last_sent:
                self._pending_state = None
                if not self.ended:
                    event = OutEvent(dict(pending.status_event, channel=self.channel))
                    if self._classify(event, force=True) == _SEND:
                        await self.put(event)
            if not self.active:
                self._syncing = False
                return
            if self._buffer_dropped or self._resync:
                self._resync = False
                read_db = True
                with_state = True
                continue
            self._order_buffer()
            while self._buffer:
                event = self._buffer[0]
                # A gap that the database could not fill (it never should) is crossed
                # rather than waited on forever.
                force = forced_seq == self.last_sent
                verdict = self._classify(event, force=force)
                if verdict == _GAP:
                    forced_seq = self.last_sent
                    read_db = True
                    break
                self._buffer.popleft()
                if verdict == _SEND:
                    await self.put(event)
            if read_db:
                continue
            if self._buffer_dropped or self._resync:
                continue
            self._syncing = False  # no await since the buffer was seen empty
            return

    def _order_buffer(self) -> None:
        """Put buffered output events in seq order (other events keep their places)."""
        buf = self._buffer
        slots = [i for i, e in enumerate(buf) if e.type == "task_output"]
        if len(slots) < 2:
            return
        outputs = sorted((buf[i] for i in slots), key=lambda e: e.seq or 0)
        items = list(buf)
        for i, e in zip(slots, outputs, strict=True):
            items[i] = e
        self._buffer = deque(items)

    async def close(self) -> None:
        self.active = False
        task = self._sync_task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
        await self.hub.detach(self)


class Group:
    """The caught-up subscribers of one channel, served by one shared write.

    A subscription joins once it has sent the channel's newest event and its socket takes
    data right away. From then on an event is added here once instead of being offered
    to each member, and at each write the frames gathered within the write interval are
    joined once and the same bytes are written to every member's socket. A member whose
    socket cannot take data at that moment, or an event that needs each subscription's
    own judgement (a `task_status`, a gap in the seqs not filled within the hub's
    `group_gap_wait`), sends members back to the per-subscription path, with every
    event they were due handed to their own sink in order first.

    Chunks published by concurrent appends (two requests, or two replicas) often arrive
    a little out of order: a chunk ahead of the next seq is held here, once for all
    members, until the missing ones arrive (then all of them are added in order). Sending
    the whole group back to the per-subscription path for that, as a gap did at first,
    cost each of the members a task, a gap wait and a socket write per event.
    """

    __slots__ = (
        "base",
        "channel",
        "events",
        "flushing",
        "gap_timer",
        "held",
        "hub",
        "last_write",
        "loose",
        "members",
        "seq",
        "task",
    )

    def __init__(self, hub: Hub, channel: str) -> None:
        self.hub = hub
        self.channel = channel
        self.task = channel.startswith("task:")
        # Subscriptions outside the group: each is offered every event of the channel.
        self.loose: set[Subscription] = set()
        # member -> index (in the channel's event numbering) of the next event it is due.
        self.members: dict[Subscription, int] = {}
        self.events: list[OutEvent] = []  # not yet written to every member
        self.base = 0  # index of events[0]
        # Task channels: the seq every member has sent (members are all caught up to it).
        self.seq = -1
        self.last_write = float("-inf")  # loop time of the last shared write
        self.flushing = False
        # Task channels: chunks that arrived ahead of seq + 1, by seq, until it arrives.
        self.held: dict[int, OutEvent] = {}
        self.gap_timer: asyncio.TimerHandle | None = None

    @property
    def total(self) -> int:
        return self.base + len(self.events)

    # --- events -------------------------------------------------------------------------

    def on_event(self, event: OutEvent) -> None:
        """Take a live event for the members (before the loose subscriptions see it)."""
        if not self.task:
            if self.members:
                self._add(event)
            return
        kind = event.type
        seq = event.seq
        if not self.members:
            if kind == "task_output" and seq is not None:
                self.seq = seq
            return
        if kind == "task_output":
            if seq is None or seq <= self.seq or seq in self.held:
                return  # a repeat (or a malformed one): every member would skip it
            if seq == self.seq + 1:
                self.seq = seq
                self._add(event)
                if self.held:
                    self._add_held()
                return
            self._hold(seq, event)
            return
        if kind == "task_status":
            self.dissolve()  # judged per subscription (output_seq, final status)
            return
        self._add(event)

    def _hold(self, seq: int, event: OutEvent) -> None:
        """A chunk ahead of the next seq: keep it until the ones before it arrive."""
        held = self.held
        held[seq] = event
        if len(held) > self.hub.buffer_limit:
            self.dissolve()
            return
        if self.gap_timer is None:
            loop = asyncio.get_running_loop()
            self.gap_timer = loop.call_later(self.hub.group_gap_wait, self._gap_expired)

    def _add_held(self) -> None:
        """Add the held chunks that now follow on (all of them, when the gap was filled)."""
        held = self.held
        while True:
            event = held.pop(self.seq + 1, None)
            if event is None:
                break
            self.seq += 1
            self._add(event)
        if not held and self.gap_timer is not None:
            self.gap_timer.cancel()
            self.gap_timer = None

    def _gap_expired(self) -> None:
        """The missing chunks did not arrive in time: each member reads them itself."""
        self.gap_timer = None
        if self.held:
            self.dissolve()

    def _add(self, event: OutEvent) -> None:
        self.events.append(event)
        hub = self.hub
        n = len(self.members)
        hub.events_delivered += n
        hub.events_delivered_shared += n
        if len(self.events) == 1 and not self.flushing:
            self.hub.mark_dirty(self)

    # --- membership ---------------------------------------------------------------------

    def join(self, sub: Subscription) -> None:
        """Make `sub` a member if it is caught up and its socket takes data right now."""
        if sub not in self.loose or not sub.sink.can_share():
            return
        if self.task and getattr(sub, "last_sent", None) != self.seq:
            return
        self.loose.discard(sub)
        self.members[sub] = self.total

    def leave(self, sub: Subscription) -> None:
        """Back to the per-subscription path, with what it was due handed to its sink."""
        pos = self.members.pop(sub, None)
        if pos is None:
            return
        hub = self.hub
        hub.events_delivered_shared -= self.total - pos  # handed to its own sink now
        if sub.active:  # (not counted: one that leaves because it unsubscribed)
            hub.group_leaves += 1
            self.loose.add(sub)
        if self.task:
            sub.caught_up(self.seq)
        sink = sub.sink
        for event in self.events[pos - self.base :]:
            if not sink.offer(event):
                hub.events_delivered -= 1
                hub.events_dropped += 1
        if self.held:
            # Past the gap: the subscription waits for (or reads) the missing chunks itself.
            for seq in sorted(self.held):
                sub.deliver(self.held[seq])
        if not self.members:
            self._drop_held()

    def _drop_held(self) -> None:
        held = self.held
        if held:
            # No member is waiting for the gap any more: the group's seq moves past it
            # (a subscription joins only once it has sent everything up to here itself).
            self.seq = max(self.seq, max(held))
            held.clear()
        if self.gap_timer is not None:
            self.gap_timer.cancel()
            self.gap_timer = None

    def dissolve(self) -> None:
        if self.members:
            self.hub.group_dissolves += 1
        for sub in list(self.members):
            self.leave(sub)
        self._drop_held()

    # --- writing ------------------------------------------------------------------------

    def flush(self) -> None:
        """Write what gathered to every member (in slices, see `hub.write_slice`)."""
        if self.flushing or not self.events:
            return
        if not self.members:
            self.base = self.total
            self.events = []
            return
        self.flushing = True
        end = self.total
        data = b"".join([e.frame for e in self.events])
        self._write_slice(list(self.members), 0, end, data)

    def _write_slice(self, targets: list[Subscription], start: int, end: int, data: bytes) -> None:
        members = self.members
        stop = min(len(targets), start + self.hub.write_slice)
        for i in range(start, stop):
            sub = targets[i]
            pos = members.get(sub)
            if pos is None or pos >= end:
                continue  # left meanwhile, or joined after these events
            try:
                if pos == self.base:
                    written = sub.sink.write_shared(data)
                else:  # joined while these gathered: only its part of them
                    written = sub.sink.write_shared(
                        b"".join([e.frame for e in self.events[pos - self.base : end - self.base]])
                    )
            except Exception:
                log.exception("writing to a socket failed")
                self.leave(sub)
                continue
            if not written:
                self.leave(sub)  # its own queue from here (and 1013 if it overflows)
                continue
            members[sub] = end
        if stop < len(targets):
            # Let the loop run other work (requests, the broker's reader) between slices.
            asyncio.get_running_loop().call_soon(self._write_slice, targets, stop, end, data)
            return
        self.flushing = False
        del self.events[: end - self.base]
        self.base = end
        if self.events:
            self.hub.mark_dirty(self)


class _Read:
    """A database read shared by the subscriptions that wait for it."""

    __slots__ = ("abandoned", "future", "started", "waiters")

    def __init__(self) -> None:
        self.future: asyncio.Future[Any]
        self.started: float | None = None  # loop time it got a slot; None while queued
        self.waiters = 0
        self.abandoned = False  # cancelled because everyone who asked left: join no more


class Hub:
    """Local fan-out for one replica."""

    def __init__(
        self,
        broker: Broker,
        history: TaskHistory,
        *,
        replay_page: int = 500,
        buffer_limit: int = 1000,
        gap_wait: float = 0.03,
        db_concurrency: int = 8,
        write_interval: float = 0.0,
        write_slice: int = 64,
    ) -> None:
        self.broker = broker
        self.history = history
        self.gap_wait = gap_wait
        # A group holds a chunk that came ahead of the next seq this long for the missing
        # ones (late publishes of concurrent appends) before sending its members to their
        # own paths, which then wait `gap_wait` each and read the database. Longer than
        # `gap_wait`: on a loaded machine a late publish often takes more than 30 ms, and
        # dissolving 1,000 members for it costs a task and a write per member and event,
        # while they would wait for the same chunk all the same.
        self.group_gap_wait = 3 * gap_wait
        # Replay pages and task states queue for separate slots: a new subscriber's state
        # (one row, it answers `subscribed`) never waits behind other subscribers' replays.
        self._db_slots = asyncio.Semaphore(db_concurrency)
        self._state_slots = asyncio.Semaphore(max(1, db_concurrency // 2))
        self._reads: dict[tuple[Any, ...], _Read] = {}
        self.replay_page = replay_page
        self.buffer_limit = buffer_limit
        self.connections: set[object] = set()
        self._channels: dict[str, set[Subscription]] = {}
        self._groups: dict[str, Group] = {}
        self._ready: dict[str, asyncio.Future[None]] = {}
        self._tasks: set[asyncio.Future[Any]] = set()
        self._closed = False
        self.events_received = 0
        self.events_delivered = 0  # queued to a local sink (live or replayed)
        self.events_dropped = 0  # offered to a sink that was full or closed
        # Of events_delivered (live), those served by a channel group's shared write,
        # and how often members left a group (each leave sends it back to its own path):
        # whether the shared path engages shows here (and in /metrics).
        self.events_delivered_shared = 0
        self.group_leaves = 0
        self.group_dissolves = 0
        self.publish_failures = 0
        self._dirty: list[Any] = []
        self._flush_scheduled = False
        # A socket is written at most once per `write_interval` (one not written for that
        # long is written at once): on loopback most of a delivery's cost is the write
        # syscall, so under a sustained stream several frames share one write, while a
        # quiet socket (e.g. one of many channels) pays no delay.
        self.write_interval = write_interval
        # A shared write goes to this many sockets, then lets the loop run other work: a
        # producer's request waits for at most one slice at each of its round trips
        # (64 sockets: ~0.5-1 ms of writes on a quiet machine; 256 made it up to ~3 ms).
        self.write_slice = max(1, write_slice)
        self._later: list[Any] = []
        self._later_handle: asyncio.TimerHandle | None = None
        broker.set_handler(self.on_message)
        broker.on_reconnect(self.resync_all)

    @property
    def subscription_count(self) -> int:
        return sum(len(subs) for subs in self._channels.values())

    @property
    def connection_count(self) -> int:
        return len(self.connections)

    async def _shared(
        self,
        key: tuple[Any, ...],
        make: Callable[[], Awaitable[Any]],
        not_before: float,
        slots: asyncio.Semaphore,
    ) -> Any:
        """One database read for every subscription that asks the same thing at once.

        A caller joins a read that still waits for a database slot, or one that started
        at or after `not_before` (when the caller knew what it needs was committed), so
        that sharing never hands out an answer older than the caller may accept.
        """
        loop = asyncio.get_running_loop()
        while True:
            entry = self._reads.get(key)
            if (
                entry is None
                or entry.abandoned
                or (entry.started is not None and entry.started < not_before)
            ):
                entry = self._start_read(key, make, slots, loop)
            entry.waiters += 1
            try:
                return await asyncio.shield(entry.future)
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is None or current.cancelling() or self._closed:
                    # Ours, or the hub's `close` cancelled the read: do not start another.
                    raise
                # Not us: the read was abandoned by the waiters before us while we joined
                # it (its cancellation had not finished yet). Ask again.
                continue
            finally:
                entry.waiters -= 1
                if entry.waiters == 0 and entry.started is None and not entry.future.done():
                    # Everyone who asked has gone (subscribers that left): do not let the
                    # read keep its place in the queue for database slots. One already
                    # running is left to finish: cancelling a query mid-flight costs the
                    # pool its connection.
                    entry.abandoned = True
                    entry.future.cancel()

    def _start_read(
        self,
        key: tuple[Any, ...],
        make: Callable[[], Awaitable[Any]],
        slots: asyncio.Semaphore,
        loop: asyncio.AbstractEventLoop,
    ) -> _Read:
        async def run(entry: _Read) -> Any:
            async with slots:
                entry.started = loop.time()
                return await make()

        entry = _Read()
        fut = asyncio.ensure_future(run(entry))
        entry.future = fut
        self._reads[key] = entry

        def forget(_: object, key: tuple[Any, ...] = key, entry: _Read = entry) -> None:
            if self._reads.get(key) is entry:
                del self._reads[key]

        fut.add_done_callback(forget)
        # Tracked, so that `close` cancels it: a read left running past the app's
        # shutdown would use the database after it was disposed.
        self.track(fut)
        return entry

    async def task_state(self, task_id: str, not_before: float) -> TaskState | None:
        """The task's state (reads shared between concurrent callers)."""
        result: TaskState | None = await self._shared(
            ("state", task_id),
            lambda: self.history.task_state(task_id),
            not_before,
            self._state_slots,
        )
        return result

    async def chunks_after(
        self, task_id: str, after_seq: int, limit: int, not_before: float
    ) -> list[dict[str, Any]]:
        """Stored chunks after a seq (reads shared between concurrent callers)."""
        result: list[dict[str, Any]] = await self._shared(
            ("chunks", task_id, after_seq, limit),
            lambda: self.history.chunks_after(task_id, after_seq, limit),
            not_before,
            self._db_slots,
        )
        return result

    def track(self, task: asyncio.Future[Any]) -> None:
        """Keep a reference to a background task until it ends."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def attach(self, sub: Subscription) -> None:
        """Add a subscription; returns once live events of its channel reach it."""
        subs = self._channels.get(sub.channel)
        if subs is None:
            subs = self._channels[sub.channel] = set()
            self._groups[sub.channel] = Group(self, sub.channel)
        subs.add(sub)
        group = sub.group = self._groups[sub.channel]
        group.loose.add(sub)
        ready = self._ready.get(sub.channel)
        if ready is None:
            ready = self._ready[sub.channel] = asyncio.get_running_loop().create_future()
            try:
                await self.broker.subscribe(sub.channel)
            finally:
                if not ready.done():
                    ready.set_result(None)
        else:
            await asyncio.shield(ready)

    async def detach(self, sub: Subscription) -> None:
        """Remove a subscription; the channel's last one unsubscribes from the broker."""
        subs = self._channels.get(sub.channel)
        if subs is None or sub not in subs:
            return
        subs.discard(sub)
        group = self._groups.get(sub.channel)
        if group is not None:
            group.leave(sub)
            group.loose.discard(sub)
        if not subs:
            del self._channels[sub.channel]
            self._groups.pop(sub.channel, None)
            self._ready.pop(sub.channel, None)
            await self.broker.unsubscribe(sub.channel)

    def mark_dirty(self, sink: Any) -> None:
        """Have `sink.flush()` called at the end of this loop iteration, or, when the sink
        was written less than `write_interval` ago, once that interval is over."""
        loop = asyncio.get_running_loop()
        due = sink.last_write + self.write_interval
        if due <= loop.time():
            self._dirty.append(sink)
            if not self._flush_scheduled:
                self._flush_scheduled = True
                loop.call_soon(self._flush)
        else:
            self._later.append(sink)
            if self._later_handle is None:
                # Sinks written together are due together; one timer serves the batch.
                self._later_handle = loop.call_at(due, self._flush_later)

    def _flush(self) -> None:
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, []
        self._write(dirty)

    def _flush_later(self) -> None:
        self._later_handle = None
        later, self._later = self._later, []
        self._write(later)

    def _write(self, sinks: list[Any]) -> None:
        now = asyncio.get_running_loop().time()
        for sink in sinks:
            sink.last_write = now
            try:
                sink.flush()
            except Exception:
                log.exception("flushing a socket failed")

    def on_message(self, channel: str, data: bytes) -> None:
        """A broker message: parse once, offer to every local subscriber of the channel."""
        subs = self._channels.get(channel)
        if not subs:
            return
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            log.warning("dropping a malformed event on %s", channel)
            return
        if not isinstance(payload, dict):
            return
        self.events_received += 1
        event = OutEvent(payload, data)
        group = self._groups[channel]
        group.on_event(event)  # the members: once for all of them
        if group.loose:
            for sub in list(group.loose):
                sub.deliver(event)

    def dispatch_local(self, channel: str, payload: dict[str, Any]) -> None:
        """Deliver an event to this replica's subscribers only (broker outage fallback)."""
        event = OutEvent(payload)
        self.on_message(channel, event.data)

    def resync_all(self) -> None:
        """After a broker outage: every task subscription re-reads what it may have missed."""
        for group in list(self._groups.values()):
            group.dissolve()
        for subs in list(self._channels.values()):
            for sub in list(subs):
                if isinstance(sub, TaskSubscription):
                    sub.resync()

    async def close(self) -> None:
        """Cancel background work (subscription syncs and shared reads)."""
        self._closed = True
        if self._later_handle is not None:
            self._later_handle.cancel()
            self._later_handle = None
        await stop_tasks(list(self._tasks), what="realtime hub")


Publisher = Callable[[Any], Awaitable[None]]
