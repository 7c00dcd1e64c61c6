"""Stopping background tasks at shutdown: cancelled, awaited for a bounded time, and never
at the cost of the caller's own cancellation.

The pattern this replaces, `task.cancel()` then `with suppress(CancelledError): await task`,
has two faults. The `suppress` also swallows a cancellation aimed at the *caller* (a
shutdown timeout, `asyncio.Runner` cancelling what is left at loop close), which then
carries on as if nothing happened. And `await task` waits forever for a task that does not
end when cancelled (one that catches the CancelledError and waits again): the shutdown,
and the process or test that runs it, hangs with nothing in the logs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)

# How long a cancelled task may take to unwind (a rollback, a socket close) before the
# shutdown gives up on it and says so.
STOP_GRACE_SECONDS = 10.0


async def stop_tasks(
    tasks: Iterable[asyncio.Future[Any] | None],
    *,
    what: str,
    grace: float = STOP_GRACE_SECONDS,
) -> None:
    """Cancel `tasks` and wait until they have ended, for at most `grace` seconds.

    A task still running after `grace` is logged with its stack and left behind (the
    shutdown goes on). An error a task ended with is logged, not raised. If the caller is
    cancelled while waiting, the CancelledError propagates (the tasks stay cancelled).
    """
    current = asyncio.current_task()
    given = {t for t in tasks if t is not None and t is not current}
    pending = {t for t in given if not t.done()}
    for task in pending:
        task.cancel()
    if pending:
        _, stuck = await asyncio.wait(pending, timeout=grace)
        for task in stuck:
            log.error(
                "%s: %r is still running %.0f s after it was cancelled; leaving it behind\n%s",
                what,
                task,
                grace,
                _stack_of(task),
            )
    for task in given:
        if task.done() and not task.cancelled():
            error = task.exception()  # retrieved, so asyncio does not report it again
            if error is not None:
                log.warning("%s: a task ended with %r", what, error, exc_info=error)


def await_chain(task: asyncio.Future[Any]) -> list[str]:
    """Where a task waits: one line per coroutine it awaits through, outermost first,
    then what the innermost one awaits. (`Task.get_stack()` shows the outermost only.)"""
    lines: list[str] = []
    awaited: object = task.get_coro() if isinstance(task, asyncio.Task) else task
    for _ in range(100):
        frame = next(
            (
                getattr(awaited, a)
                for a in ("cr_frame", "gi_frame", "ag_frame")
                if hasattr(awaited, a)
            ),
            None,
        )
        if frame is None:
            break
        code = frame.f_code
        lines.append(f'  File "{code.co_filename}", line {frame.f_lineno}, in {code.co_name}')
        inner = next(
            (
                getattr(awaited, a)
                for a in ("cr_await", "gi_yieldfrom", "ag_await")
                if getattr(awaited, a, None) is not None
            ),
            None,
        )
        if inner is None:
            break
        awaited = inner
    lines.append(f"  awaiting {awaited!r}")
    return lines


def _stack_of(task: asyncio.Future[Any]) -> str:
    return "\n".join(await_chain(task))


def raise_if_cancelled() -> None:
    """Raise CancelledError if the current task has a cancellation request pending.

    For the top of a background loop's iteration. A library can swallow a cancellation
    on the way (on Python 3.11, `asyncio.wait_for` returns the result when its awaitable
    finishes at the moment it is cancelled; SQLAlchemy's pool and asyncpg's connect use
    it): the request stays counted in `Task.cancelling()` but nothing is raised, and a
    loop that catches every Exception around its work would then go on forever, holding
    up whoever waits for it to end (a TaskGroup, a shutdown).
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
