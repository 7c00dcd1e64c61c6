"""The app behind a real uvicorn on a loopback port: in the test's own event loop
(`serve_app`), in a thread of its own for sync tests (`threaded_server`), or as a
subprocess, as `serve` runs it (`UvicornProcess`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
import websockets
from fastapi import FastAPI

from dashboard_api.aiotasks import stop_tasks
from dashboard_api.app import create_app
from dashboard_api.realtime import uvicorn_ws_options
from dashboard_api.settings import Settings
from tests.support.tokens import Tokens


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {port}")


def _uvicorn(
    app: FastAPI, settings: Settings, **uvicorn_options: Any
) -> tuple[uvicorn.Server, socket.socket, int]:
    """A uvicorn server for `app` (lifespan on) and the loopback socket it will serve."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        app,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=2,
        **{**uvicorn_ws_options(settings), **uvicorn_options},
    )
    server = uvicorn.Server(config)
    return server, sock, int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def serve_app(
    settings: Settings, **uvicorn_options: Any
) -> AsyncIterator[tuple[FastAPI, int]]:
    """Run `create_app(settings)` under uvicorn in this loop until the block ends."""
    app = create_app(settings)
    server, sock, port = _uvicorn(app, settings, **uvicorn_options)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        for _ in range(600):
            if server.started or task.done():
                break
            await asyncio.sleep(0.01)
        if task.done():
            task.result()
        assert server.started, "uvicorn did not start"
        yield app, port
    finally:
        server.should_exit = True
        await asyncio.wait({task}, timeout=15)
        # uvicorn cancels the connections still open after its graceful timeout but does
        # not wait for them, nor does a stuck serve() end by itself: end both here, so that
        # no request outlives the app (whose database is disposed by then) and the test's
        # event loop is not left with them to cancel at close.
        await stop_tasks([task, *server.server_state.tasks], what="test uvicorn server")
        sock.close()


@contextlib.contextmanager
def threaded_server(settings: Settings) -> Iterator[str]:
    """Serve `create_app(settings)` with uvicorn in a thread; yields the base URL."""
    server, sock, port = _uvicorn(create_app(settings), settings)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()
        # A server that does not stop would be left running (daemon thread) with its loop's
        # tasks and SQLite threads, failing a later test with "Event loop is closed".
        assert not thread.is_alive(), "the threaded uvicorn server did not stop within 20 s"


@dataclass
class LiveServer:
    """An app served by uvicorn on 127.0.0.1, with tokens of every role."""

    app: FastAPI
    port: int
    tokens: Tokens
    http: httpx.AsyncClient

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws_url(self, token: str | None = None) -> str:
        base = f"ws://127.0.0.1:{self.port}/ws"
        return base if token is None else f"{base}?token={token}"

    @property
    def ctx(self) -> Any:
        return self.app.state.ctx

    def headers(self, role: str) -> dict[str, str]:
        return self.tokens.headers(role)

    async def create_task(self, task_id: str, status: str = "running") -> dict[str, Any]:
        r = await self.http.post(
            "/api/tasks",
            json={
                "task_id": task_id,
                "agent_type": "coder",
                "input_message": "x",
                "status": status,
            },
            headers=self.headers("agent"),
        )
        assert r.status_code == 201, r.text
        return dict(r.json())

    async def append(self, task_id: str, *contents: str) -> dict[str, Any]:
        body: dict[str, Any]
        if len(contents) == 1:
            body = {"content": contents[0]}
        else:
            body = {"chunks": [{"content": c} for c in contents]}
        r = await self.http.post(
            f"/api/tasks/{task_id}/output", json=body, headers=self.headers("agent")
        )
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def finish(self, task_id: str, status: str = "completed") -> None:
        r = await self.http.patch(
            f"/api/tasks/{task_id}", json={"status": status}, headers=self.headers("agent")
        )
        assert r.status_code == 200, r.text

    async def connect(self, role: str = "user", **kwargs: Any) -> Any:
        token = getattr(self.tokens, role)
        return await websockets.connect(self.ws_url(token), max_size=None, **kwargs)


# `await serve(**settings_overrides)`: the `serve` fixture (tests/conftest.py).
ServeFactory = Callable[..., Awaitable[LiveServer]]


def base_env(database_url: str, redis_url: str | None = None, **extra: str) -> dict[str, str]:
    """Environment of a subprocess server: our settings only, nothing from a .env file."""
    env = {
        "DASHBOARD_DATABASE_URL": database_url,
        "DASHBOARD_TOKEN_CACHE_SECONDS": "0",
        "DASHBOARD_LOG_LEVEL": "INFO",
    }
    if redis_url:
        env["DASHBOARD_REDIS_URL"] = redis_url
    env.update(extra)
    return env


class UvicornProcess:
    """`uvicorn dashboard_api.app:create_app --factory` as a subprocess."""

    def __init__(self, env: dict[str, str], *, port: int | None = None, log: Path) -> None:
        self.port = port or free_port()
        self.env = env
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *extra: str) -> UvicornProcess:
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen(
                [
                    sys.executable, "-m", "uvicorn", "dashboard_api.app:create_app", "--factory",
                    "--host", "127.0.0.1", "--port", str(self.port),
                    "--ws-per-message-deflate", "false", *extra,
                ],
                env={**os.environ, **self.env},
                cwd=self.log.parent,  # no stray .env file is read
                stdout=err,
                stderr=err,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(self.log.read_text()[-3000:])
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/api/health", timeout=1).status_code == 200:
                    return self
            time.sleep(0.05)
        raise RuntimeError("uvicorn did not answer: " + self.log.read_text()[-3000:])

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
