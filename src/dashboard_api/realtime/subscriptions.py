"""Subscriptions: one sink's interest in one channel. A `task:{id}` subscription keeps the
seq of the last chunk it sent, so that resume, replay and cross-replica reordering never
produce a gap or a duplicate: while it syncs from the database it buffers live events,
and a live event that would leave a gap sends it back to the database first."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any, Protocol

from dashboard_api.aiotasks import raise_if_cancelled
from dashboard_api.realtime.events import OutEvent, output_event
from dashboard_api.realtime.groups import Group
from dashboard_api.realtime.history import TaskState
from dashboard_api.realtime.sinks import QueueSink, Sink, SinkClosed
from dashboard_api.task_statuses import TERMINAL_STATUSES

log = logging.getLogger(__name__)


class SubscriptionHub(Protocol):
    """The hub, as a subscription sees it."""

    gap_wait: float
    buffer_limit: int
    replay_page: int
    events_delivered: int
    events_dropped: int

    async def attach(self, sub: Subscription) -> None: ...

    async def detach(self, sub: Subscription) -> None: ...

    def track(self, task: asyncio.Future[Any]) -> None: ...

    async def task_state(self, task_id: str, not_before: float) -> TaskState | None: ...

    async def chunks_after(
        self, task_id: str, after_seq: int, limit: int, not_before: float
    ) -> list[dict[str, Any]]: ...


class Subscription:
    """One sink's interest in one channel."""

    def __init__(self, hub: SubscriptionHub, sink: Sink, channel: str) -> None:
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
        self, hub: SubscriptionHub, sink: Sink, channel: str, task_id: str, since_seq: int | None
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
        try:
            await self._sync_attempts(read_db, with_state, gap_wait)
        finally:
            if self._sync_task is asyncio.current_task():
                # A caught-up subscription keeps no finished task (with its coroutine and
                # context: objects each full garbage collection walks while it lives).
                self._sync_task = None

    async def _sync_attempts(self, read_db: bool, with_state: bool, gap_wait: float) -> None:
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
        forced_seq = -1
        while True:
            if with_state:
                with_state = False
                await self._read_state()
            if read_db:
                read_db = False
                await self._replay()
            await self._send_pending_state()
            if not self.active:
                self._syncing = False
                return
            if self._buffer_dropped or self._resync:
                self._resync = False
                read_db = with_state = True
                continue
            gap_at = await self._drain_buffer(forced_seq)
            if gap_at is not None:
                forced_seq = gap_at
                read_db = True
                continue
            if self._buffer_dropped or self._resync:
                continue
            self._syncing = False  # no await since the buffer was seen empty
            return

    async def _read_state(self) -> None:
        """Note a final status to send once the output before it has been sent."""
        state = await self.hub.task_state(self.task_id, self._need_at)
        if state is not None and state.ended and not self.ended:
            self._pending_state = state

    async def _replay(self) -> None:
        """Send the stored chunks after `last_sent`, page by page."""
        self._buffer_dropped = False
        page = self.hub.replay_page
        while self.active:
            chunks = await self.hub.chunks_after(self.task_id, self.last_sent, page, self._need_at)
            for chunk in chunks:
                if chunk["seq"] <= self.last_sent:
                    continue
                await self.put(output_event(self.channel, self.task_id, chunk))
                self.last_sent = chunk["seq"]
            if len(chunks) < page:
                return

    async def _send_pending_state(self) -> None:
        """The final status read from the database, once every chunk before it was sent."""
        pending = self._pending_state
        if pending is not None and pending.output_seq <= self.last_sent:
            self._pending_state = None
            if not self.ended:
                event = OutEvent(dict(pending.status_event, channel=self.channel))
                if self._classify(event, force=True) == _SEND:
                    await self.put(event)

    async def _drain_buffer(self, forced_seq: int) -> int | None:
        """Send the buffered live events in order; at a gap, stop and return the seq it
        follows (the database fills it, and a gap it cannot fill is crossed next time)."""
        self._order_buffer()
        while self._buffer:
            event = self._buffer[0]
            # A gap that the database could not fill (it never should) is crossed
            # rather than waited on forever.
            verdict = self._classify(event, force=forced_seq == self.last_sent)
            if verdict == _GAP:
                return self.last_sent
            self._buffer.popleft()
            if verdict == _SEND:
                await self.put(event)
        return None

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
