"""`stop_tasks`: shutdowns end even when a task ignores its cancellation, and do not
swallow a cancellation aimed at the caller."""

from __future__ import annotations

import asyncio
import logging

import pytest

from dashboard_api.aiotasks import await_chain, stop_tasks


async def _stubborn(release: asyncio.Event) -> None:
    """Catches its cancellation and waits again (the bug stop_tasks must survive)."""
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await release.wait()
            return


async def test_a_task_that_ignores_cancellation_is_left_behind_and_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = asyncio.Event()
    stubborn = asyncio.create_task(_stubborn(release), name="stubborn")
    polite = asyncio.create_task(asyncio.sleep(3600), name="polite")
    await asyncio.sleep(0)
    with caplog.at_level(logging.ERROR, logger="dashboard_api.aiotasks"):
        await stop_tasks([stubborn, polite, None], what="test", grace=0.05)
    assert polite.cancelled()
    assert not stubborn.done()
    (record,) = caplog.records
    assert "stubborn" in record.getMessage()
    assert "_stubborn" in record.getMessage()  # where it waits
    release.set()
    await stubborn


async def test_the_callers_cancellation_is_not_swallowed() -> None:
    release = asyncio.Event()
    stubborn = asyncio.create_task(_stubborn(release))
    after: list[str] = []

    async def shutdown() -> None:
        await stop_tasks([stubborn], what="test", grace=3600)
        after.append("went on")  # what `with suppress(CancelledError): await` would do

    await asyncio.sleep(0)
    closer = asyncio.create_task(shutdown())
    await asyncio.sleep(0)
    closer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closer
    assert after == []
    release.set()
    await stubborn


async def test_errors_of_stopped_tasks_are_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def fail() -> None:
        raise RuntimeError("boom")

    failed = asyncio.create_task(fail())
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="dashboard_api.aiotasks"):
        await stop_tasks([failed], what="test")
    assert any("boom" in r.getMessage() for r in caplog.records)


async def test_await_chain_follows_nested_coroutines() -> None:
    gate = asyncio.Event()

    async def inner() -> None:
        await gate.wait()

    async def outer() -> None:
        await inner()

    task = asyncio.create_task(outer())
    await asyncio.sleep(0)
    text = "\n".join(await_chain(task))
    assert text.index("in outer") < text.index("in inner") < text.index("in wait")
    gate.set()
    await task


async def test_a_loop_ends_on_a_cancellation_a_library_swallowed() -> None:
    from dashboard_api.aiotasks import raise_if_cancelled

    rounds = 0

    async def swallowing_call() -> None:
        # What Python 3.11's wait_for does when its awaitable finishes as it is cancelled.
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            return

    async def worker() -> None:
        nonlocal rounds
        while True:
            raise_if_cancelled()
            rounds += 1
            await swallowing_call()  # returns as if nothing happened

    task = asyncio.create_task(worker())
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.wait({task}, timeout=5)
    assert task.cancelled()
    assert rounds == 1
