"""What resume reads from the database, and reads shared between the subscriptions that
wait for the same answer at once.

The hub does not know where tasks are stored: `create_app` hands it a `TaskHistory`
(`api/task_history.py` reads it through the tasks service).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from dashboard_api.task_statuses import TERMINAL_STATUSES


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


class _Read:
    """A database read shared by the subscriptions that wait for it."""

    __slots__ = ("abandoned", "future", "started", "waiters")

    def __init__(self) -> None:
        self.future: asyncio.Future[Any]
        self.started: float | None = None  # loop time it got a slot; None while queued
        self.waiters = 0
        self.abandoned = False  # cancelled because everyone who asked left: join no more


class SharedReads:
    """The hub's reads of a `TaskHistory`, each shared by the callers that ask at once and
    each waiting for a database slot (replay pages and task states queue separately)."""

    def __init__(
        self,
        history: TaskHistory,
        *,
        db_concurrency: int,
        track: Callable[[asyncio.Future[Any]], None],
    ) -> None:
        self.history = history
        # Replay pages and task states queue for separate slots: a new subscriber's state
        # (one row, it answers `subscribed`) never waits behind other subscribers' replays.
        self._db_slots = asyncio.Semaphore(db_concurrency)
        self._state_slots = asyncio.Semaphore(max(1, db_concurrency // 2))
        self._reads: dict[tuple[Any, ...], _Read] = {}
        self._track = track
        self.closed = False  # set by the hub's `close`: a cancelled read is not retried

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
                if current is None or current.cancelling() or self.closed:
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
        self._track(fut)
        return entry
