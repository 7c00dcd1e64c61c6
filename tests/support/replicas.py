"""Replicas of the service as real uvicorn processes (PostgreSQL + Redis): start one, kill
or stop it, read its /metrics, follow a task through the Python client."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from dashboard_api.client import DashboardClient
from dashboard_api.db.engine import Database
from dashboard_api.services.tokens import create_token
from dashboard_api.timeutil import SystemClock
from tests.support.env import require_services, truncate
from tests.support.servers import free_port


async def replica_tokens(url: str) -> dict[str, str]:
    db = Database(url)
    try:
        out = {}
        async with db.write() as session:
            for role in ("user", "agent"):
                token, _ = await create_token(
                    session,
                    user_id=f"{role}-1",
                    role=role,
                    now=SystemClock().now(),
                )
                out[role] = token
        return out
    finally:
        await db.dispose()


@contextlib.asynccontextmanager
async def replica(env: dict[str, str]) -> AsyncIterator[str]:
    async with replica_process(env) as (url, _):
        yield url


@contextlib.asynccontextmanager
async def replica_process(env: dict[str, str]) -> AsyncIterator[tuple[str, Any]]:
    """A uvicorn replica the test may also kill; yields (base url, process).

    Its stderr (a JSON log line per request) goes to a file, read only if it fails to
    start. A pipe nobody reads hung the suite: once asyncio has buffered 128 KiB of it,
    it stops reading; the replica then blocks on its next log write (frozen mid-test),
    and on Python 3.11 a `proc.wait()` begun before the process died never returns
    while one of its pipes is still open, so the cleanup below waited forever even
    after SIGKILL.
    """
    port = free_port()
    with tempfile.TemporaryFile() as errors:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "uvicorn",
            "dashboard_api.app:create_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--ws-per-message-deflate",
            "false",
            env={**os.environ, **env},
            stdout=asyncio.subprocess.DEVNULL,
            stderr=errors,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            async with httpx.AsyncClient() as http:
                for _ in range(300):
                    with contextlib.suppress(httpx.HTTPError):
                        if (await http.get(f"{url}/api/health")).status_code == 200:
                            break
                    if proc.returncode is not None:
                        errors.seek(0)
                        raise RuntimeError(errors.read().decode()[-2000:])
                    await asyncio.sleep(0.05)
            yield url, proc
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGCONT)  # in case the test froze it
                    proc.terminate()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 10)
            if proc.returncode is None:
                proc.kill()
                # Bounded all the same: a hang here is what the test timeout cannot name.
                await asyncio.wait_for(proc.wait(), 30)
            # Close the transport while this loop runs: left to the garbage collector, it
            # is closed later through this (by then closed) loop, and the "Event loop is
            # closed" error fails whichever test the worker runs at that time.
            transport = getattr(proc, "_transport", None)
            if transport is not None:
                transport.close()


async def follow_all(url: str, token: str, task_id: str) -> list[tuple[int, str]]:
    got: list[tuple[int, str]] = []
    async with DashboardClient(url, token) as client:
        async for event in client.follow(task_id, initial_backoff=0.05, max_backoff=0.5):
            if event.kind == "output":
                got.append((event.seq or 0, event.content or ""))
            elif event.terminal:
                break
    return got


def metric_value(text: str, sample: str) -> float:
    """The value of one sample (name with its labels, as rendered) in a /metrics page."""
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{sample} not in /metrics")


@pytest.fixture
async def pg(pg_url: str) -> str:
    """The session's PostgreSQL database, emptied: for tests whose replicas run on it."""
    require_services()
    await truncate(pg_url)
    return pg_url
