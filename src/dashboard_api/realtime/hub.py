"""The per-replica hub: channels → subscriptions → sinks with bounded send queues.

Every broker message is parsed and serialized once per replica (`OutEvent`) and offered to
each local subscription (`realtime/subscriptions.py`), except those in the channel's
`Group` (`realtime/groups.py`: caught up, socket ready), which get it once for all through
one shared write. Sockets are written at the end of a loop iteration, or once per write
interval under a sustained stream (`mark_dirty`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson

from dashboard_api.aiotasks import stop_tasks
from dashboard_api.realtime.broker import Broker
from dashboard_api.realtime.events import OutEvent
from dashboard_api.realtime.groups import Group
from dashboard_api.realtime.history import SharedReads, TaskHistory, TaskState
from dashboard_api.realtime.subscriptions import Subscription, TaskSubscription

log = logging.getLogger(__name__)


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
        self.reads = SharedReads(history, db_concurrency=db_concurrency, track=self.track)
        self.replay_page = replay_page
        self.buffer_limit = buffer_limit
        self.connections: set[object] = set()
        self._channels: dict[str, set[Subscription]] = {}
        self._groups: dict[str, Group] = {}
        self._ready: dict[str, asyncio.Future[None]] = {}
        self._tasks: set[asyncio.Future[Any]] = set()
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
        self._paced: dict[Any, asyncio.TimerHandle] = {}
        broker.set_handler(self.on_message)
        broker.on_reconnect(self.resync_all)

    @property
    def subscription_count(self) -> int:
        return sum(len(subs) for subs in self._channels.values())

    @property
    def connection_count(self) -> int:
        return len(self.connections)

    async def task_state(self, task_id: str, not_before: float) -> TaskState | None:
        """The task's state (reads shared between concurrent callers)."""
        return await self.reads.task_state(task_id, not_before)

    async def chunks_after(
        self, task_id: str, after_seq: int, limit: int, not_before: float
    ) -> list[dict[str, Any]]:
        """Stored chunks after a seq (reads shared between concurrent callers)."""
        return await self.reads.chunks_after(task_id, after_seq, limit, not_before)

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
        was written less than `write_interval` (or its own `pace`, if longer) ago, once
        that interval is over."""
        loop = asyncio.get_running_loop()
        pace = sink.pace
        due = sink.last_write + (pace if pace > self.write_interval else self.write_interval)
        if due <= loop.time():
            self._dirty.append(sink)
            if not self._flush_scheduled:
                self._flush_scheduled = True
                loop.call_soon(self._flush)
        elif pace > self.write_interval:
            # A large group (see `Group.pace`): a timer of its own, so that the sockets
            # batched on the shared timer below are not held back to its later time.
            self._paced[sink] = loop.call_at(due, self._flush_paced, sink)
        else:
            self._later.append(sink)
            if self._later_handle is None:
                # Sinks written together are due together; one timer serves the batch.
                self._later_handle = loop.call_at(due, self._flush_later)

    def _flush(self) -> None:
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, []
        self._write(dirty)

    def _flush_paced(self, sink: Any) -> None:
        self._paced.pop(sink, None)
        self._write([sink])

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
        self.reads.closed = True
        if self._later_handle is not None:
            self._later_handle.cancel()
            self._later_handle = None
        for handle in self._paced.values():
            handle.cancel()
        self._paced.clear()
        await stop_tasks(list(self._tasks), what="realtime hub")
