"""Diagnose stuck tests: before pytest-timeout ends a test, dump its event loop's tasks.

pytest-timeout (`timeout_method = thread`, see pyproject.toml) ends the worker when a test
(setup, call and teardown together) runs over `timeout`. Its own stack dump goes to the
worker's terminal, which nobody sees under xdist, and a thread stack of a stuck asyncio
test only says "the loop waits in select()": what is stuck is a task. A few seconds before
pytest-timeout fires, this plugin writes to the run's real stderr (shared by the xdist
workers, uncaptured) the stack of every thread and every unfinished task of the event loop
running in the main thread, with the coroutines each one waits in.
"""

from __future__ import annotations

import asyncio
import faulthandler
import os
import sys
import threading
from collections.abc import Iterator
from typing import Any, TextIO

import pytest

from dashboard_api.aiotasks import await_chain

# Seconds before pytest-timeout's deadline at which the tasks are dumped.
_AHEAD = 5.0
_STDERR: list[TextIO] = []


def pytest_configure(config: pytest.Config) -> None:
    # Capturing is suspended while plugins are configured: fd 2 is the real stderr here
    # (as for pytest's own faulthandler plugin). During a test it points at a capture file.
    _STDERR.append(os.fdopen(os.dup(2), "w", buffering=1))


def _main_thread_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop whose `run_forever` is on the main thread's stack, if any."""
    frame = sys._current_frames().get(threading.main_thread().ident or -1)
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, asyncio.AbstractEventLoop):
            return candidate
        frame = frame.f_back
    return None


def _tasks_of(loop: asyncio.AbstractEventLoop) -> list[asyncio.Task[Any]]:
    # all_tasks() iterates a WeakSet the loop's thread mutates: retry on a race.
    for _ in range(10):
        try:
            return [t for t in asyncio.all_tasks(loop) if not t.done()]
        except RuntimeError:
            continue
    return []


def dump_loop_tasks(nodeid: str) -> None:
    out = _STDERR[0] if _STDERR else sys.stderr
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    out.write(f"\n{'+' * 20} hangwatch [{worker}]: {nodeid} is about to time out {'+' * 20}\n")
    out.flush()
    faulthandler.dump_traceback(out, all_threads=True)
    loop = _main_thread_loop()
    if loop is None:
        out.write("no event loop is running in the main thread\n")
        out.flush()
        return
    tasks = _tasks_of(loop)
    out.write(f"{len(tasks)} unfinished task(s) in {loop!r}\n")
    for task in tasks:
        cancelling = task.cancelling() if hasattr(task, "cancelling") else "?"
        out.write(f"~~~ {task.get_name()} (cancelling={cancelling}): {task!r}\n")
        try:
            out.write("\n".join(await_chain(task)) + "\n")
        except Exception as exc:  # a task stepping meanwhile in the loop's thread
            out.write(f"(stack unavailable: {exc!r})\n")
    out.flush()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    """Arm a timer for the whole protocol (setup, call, teardown), like pytest-timeout."""
    marker = item.get_closest_marker("timeout")
    timeout = marker.args[0] if marker is not None and marker.args else None
    if timeout is None:
        timeout = item.config.getoption("timeout", None) or item.config.getini("timeout")
    seconds = float(timeout or 0)
    timer = None
    if seconds > _AHEAD:
        timer = threading.Timer(seconds - _AHEAD, dump_loop_tasks, (item.nodeid,))
        timer.daemon = True
        timer.start()
    try:
        yield
    finally:
        if timer is not None:
            timer.cancel()
