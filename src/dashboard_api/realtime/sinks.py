"""Where a subscription's events go: a sink with a bounded send queue (a WebSocket
connection, `realtime/ws.py`, or an SSE response, `realtime/sse.py`)."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections import deque

from dashboard_api.realtime.events import OutEvent


class SinkClosed(Exception):
    """The sink does not take events anymore."""


class Sink(ABC):
    """Where a subscription's events go: a WebSocket connection or an SSE response."""

    __slots__ = ()

    closed: bool

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
    """A bounded queue read by one consumer task (the base of WebSocket and SSE sinks).

    A sink lives as long as its socket, and a server holds thousands of them: the queue
    and the two events (each with a deque of waiters, ~1 KB) are made when first needed,
    and the attributes are slots (no instance dict).
    """

    __slots__ = ("_room", "_wakeup", "closed", "overflowed", "queue", "size")

    _EMPTY: deque[OutEvent] = deque(maxlen=0)  # the queue of every sink that never queued

    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self.queue: deque[OutEvent] = QueueSink._EMPTY
        self.closed = False
        self.overflowed = False
        self._wakeup: asyncio.Event | None = None  # the consumer waits for an event
        self._room: asyncio.Event | None = None  # a replay waits for room

    def _append(self, event: OutEvent) -> None:
        queue = self.queue
        if queue is QueueSink._EMPTY:
            queue = self.queue = deque()
        queue.append(event)
        wakeup = self._wakeup
        if wakeup is not None:
            wakeup.set()

    def offer(self, event: OutEvent) -> bool:
        if self.closed:
            return False
        if len(self.queue) >= self.size:
            self.overflowed = True
            self.on_overflow()
            return False
        self._append(event)
        return True

    async def put(self, event: OutEvent) -> None:
        # Replays leave half of the queue to live events, so that a long replay on one
        # channel never pushes a connection over its limit by itself.
        limit = max(1, self.size // 2)
        while len(self.queue) >= limit and not self.closed:
            room = self._room
            if room is None:
                room = self._room = asyncio.Event()
            room.clear()
            await room.wait()
        if self.closed:
            raise SinkClosed
        self._append(event)

    def close(self) -> None:
        """Stop taking events and wake every waiter."""
        self.closed = True
        if self._wakeup is not None:
            self._wakeup.set()
        if self._room is not None:
            self._room.set()

    def on_overflow(self) -> None:
        self.close()

    async def get(self) -> OutEvent | None:
        """The next event, or None once closed."""
        while not self.queue:
            if self.closed:
                return None
            wakeup = self._wakeup
            if wakeup is None:
                wakeup = self._wakeup = asyncio.Event()
            wakeup.clear()
            await wakeup.wait()
        event = self.queue.popleft()
        self._note_room()
        return event

    def _note_room(self) -> None:
        room = self._room
        if room is not None and len(self.queue) < max(1, self.size // 2):
            room.set()
